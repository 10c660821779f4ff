#include "conveyor/scheduler/cron.hpp"

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace conveyor::scheduler {
namespace {

CivilTime at(int year, unsigned month, unsigned day, unsigned hour = 0, unsigned minute = 0, unsigned second = 0) {
    return {year, month, day, hour, minute, second};
}

std::string show(const std::optional<CivilTime>& time) {
    if (!time) {
        return "never";
    }
    char text[32];
    std::snprintf(text, sizeof text, "%04d-%02u-%02u %02u:%02u:%02u", time->year, time->month, time->day, time->hour,
                  time->minute, time->second);
    return text;
}

/// The next `count` fire times after `from`, as text.
std::vector<std::string> fires(const std::string& expression, CivilTime from, int count) {
    const auto cron = CronExpression::parse(expression);
    std::vector<std::string> times;
    for (int i = 0; i < count; ++i) {
        const auto next = cron.next_after(from);
        times.push_back(show(next));
        if (!next) {
            break;
        }
        from = *next;
    }
    return times;
}

std::string parse_error(const std::string& expression) {
    try {
        (void)CronExpression::parse(expression);
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "(accepted)";
}

TEST(CronExpression, SixFieldsStartWithSecondsAndFiveFieldsFireOnTheMinute) {
    EXPECT_EQ(fires("*/20 * * * * *", at(2026, 1, 1, 10, 0, 5), 3),
              (std::vector<std::string>{"2026-01-01 10:00:20", "2026-01-01 10:00:40", "2026-01-01 10:01:00"}));
    EXPECT_EQ(fires("*/15 * * * *", at(2026, 1, 1, 10, 7, 30), 2),
              (std::vector<std::string>{"2026-01-01 10:15:00", "2026-01-01 10:30:00"}));
}

TEST(CronExpression, TheNextFireIsStrictlyAfterTheGivenTime) {
    EXPECT_EQ(show(CronExpression::parse("0 30 2 * * *").next_after(at(2026, 3, 1, 2, 30, 0))), "2026-03-02 02:30:00");
    EXPECT_EQ(show(CronExpression::parse("0 30 2 * * *").next_after(at(2026, 3, 1, 2, 29, 59))), "2026-03-01 02:30:00");
}

TEST(CronExpression, ListsRangesAndStepsCombine) {
    EXPECT_EQ(fires("0 0,15,45 9-10 * * *", at(2026, 5, 4, 8, 0, 0), 7),
              (std::vector<std::string>{"2026-05-04 09:00:00", "2026-05-04 09:15:00", "2026-05-04 09:45:00",
                                        "2026-05-04 10:00:00", "2026-05-04 10:15:00", "2026-05-04 10:45:00",
                                        "2026-05-05 09:00:00"}));
    // "a-b/n" steps through the range; "a/n" runs from a to the field's end.
    EXPECT_EQ(fires("0 10-30/10 * * * *", at(2026, 5, 4, 8, 0, 0), 4),
              (std::vector<std::string>{"2026-05-04 08:10:00", "2026-05-04 08:20:00", "2026-05-04 08:30:00",
                                        "2026-05-04 09:10:00"}));
    EXPECT_EQ(fires("0 50/5 * * * *", at(2026, 5, 4, 8, 0, 0), 3),
              (std::vector<std::string>{"2026-05-04 08:50:00", "2026-05-04 08:55:00", "2026-05-04 09:50:00"}));
}

TEST(CronExpression, MonthAndWeekdayNamesAreCaseInsensitiveAndSevenIsSunday) {
    EXPECT_EQ(fires("0 0 12 * jan,Jul MON", at(2026, 1, 1), 2),
              (std::vector<std::string>{"2026-01-05 12:00:00", "2026-01-12 12:00:00"}));
    EXPECT_EQ(fires("0 0 0 * * 7", at(2026, 11, 22, 0, 0, 1), 1), (std::vector<std::string>{"2026-11-29 00:00:00"}));
    EXPECT_EQ(fires("0 0 0 * * sun", at(2026, 11, 22, 0, 0, 1), 1), (std::vector<std::string>{"2026-11-29 00:00:00"}));
    EXPECT_EQ(fires("0 0 9 * * mon-fri", at(2026, 11, 20, 10), 2),  // a Friday, after 09:00
              (std::vector<std::string>{"2026-11-23 09:00:00", "2026-11-24 09:00:00"}));
}

TEST(CronExpression, BothDayFieldsRestrictedMatchEitherAsInVixieCron) {
    // The 13th of the month, or any Friday.
    EXPECT_EQ(fires("0 0 0 13 * fri", at(2026, 11, 1), 4),
              (std::vector<std::string>{"2026-11-06 00:00:00", "2026-11-13 00:00:00", "2026-11-20 00:00:00",
                                        "2026-11-27 00:00:00"}));
    // A day field that starts with '*' is unrestricted, so the other one alone decides.
    EXPECT_EQ(fires("0 0 0 */1 * fri", at(2026, 11, 1), 1), (std::vector<std::string>{"2026-11-06 00:00:00"}));
    EXPECT_EQ(fires("0 0 0 ? * fri", at(2026, 11, 1), 1), (std::vector<std::string>{"2026-11-06 00:00:00"}));
}

TEST(CronExpression, MonthEndsAreRespected) {
    // The 31st exists in seven months only.
    EXPECT_EQ(fires("0 0 0 31 * *", at(2026, 1, 31, 1), 3),
              (std::vector<std::string>{"2026-03-31 00:00:00", "2026-05-31 00:00:00", "2026-07-31 00:00:00"}));
    EXPECT_EQ(fires("0 0 0 30 * *", at(2026, 1, 30, 1), 2),
              (std::vector<std::string>{"2026-03-30 00:00:00", "2026-04-30 00:00:00"}));
}

TEST(CronExpression, TwentyNinthOfFebruaryWaitsForLeapYearsAndSkipsCenturiesNotDivisibleBy400) {
    EXPECT_EQ(fires("0 0 0 29 2 *", at(2026, 1, 1), 2),
              (std::vector<std::string>{"2028-02-29 00:00:00", "2032-02-29 00:00:00"}));
    EXPECT_EQ(fires("0 0 0 29 2 *", at(2096, 3, 1), 1), (std::vector<std::string>{"2104-02-29 00:00:00"}));
    EXPECT_EQ(fires("0 0 0 29 2 *", at(1999, 3, 1), 1), (std::vector<std::string>{"2000-02-29 00:00:00"}));
}

TEST(CronExpression, RollsOverMinutesHoursDaysMonthsAndYears) {
    EXPECT_EQ(show(CronExpression::parse("* * * * * *").next_after(at(2026, 12, 31, 23, 59, 59))),
              "2027-01-01 00:00:00");
    EXPECT_EQ(show(CronExpression::parse("0 0 0 1 1 *").next_after(at(2026, 1, 1))), "2027-01-01 00:00:00");
    EXPECT_EQ(show(CronExpression::parse("59 59 23 * * *").next_after(at(2026, 2, 28, 23, 59, 59))),
              "2026-03-01 23:59:59");
}

TEST(CronExpression, MacrosStandForTheirExpressions) {
    const auto from = at(2026, 11, 22, 10, 30);  // a Sunday
    EXPECT_EQ(show(CronExpression::parse("@yearly").next_after(from)), "2027-01-01 00:00:00");
    EXPECT_EQ(show(CronExpression::parse("@annually").next_after(from)), "2027-01-01 00:00:00");
    EXPECT_EQ(show(CronExpression::parse("@monthly").next_after(from)), "2026-12-01 00:00:00");
    EXPECT_EQ(show(CronExpression::parse("@weekly").next_after(from)), "2026-11-29 00:00:00");
    EXPECT_EQ(show(CronExpression::parse("@daily").next_after(from)), "2026-11-23 00:00:00");
    EXPECT_EQ(show(CronExpression::parse("@midnight").next_after(from)), "2026-11-23 00:00:00");
    EXPECT_EQ(show(CronExpression::parse("@hourly").next_after(from)), "2026-11-22 11:00:00");
}

TEST(CronExpression, MatchesAgreesWithNextAfter) {
    const auto cron = CronExpression::parse("0 */7 8-18 1-10,20 */2 mon-sat");
    auto time = at(2026, 1, 1);
    for (int i = 0; i < 200; ++i) {
        const auto next = cron.next_after(time);
        ASSERT_TRUE(next);
        EXPECT_TRUE(cron.matches(*next)) << show(next);
        time = *next;
    }
    EXPECT_FALSE(cron.matches(at(2026, 2, 2, 8, 0, 0)));  // February is not every other month from January
}

/// One second later, by the calendar.
CivilTime plus_one_second(CivilTime t) {
    static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const bool leap = (t.year % 4 == 0 && t.year % 100 != 0) || t.year % 400 == 0;
    const unsigned month_days = t.month == 2 && leap ? 29 : kDays[t.month - 1];
    if (++t.second < 60) {
        return t;
    }
    t.second = 0;
    if (++t.minute < 60) {
        return t;
    }
    t.minute = 0;
    if (++t.hour < 24) {
        return t;
    }
    t.hour = 0;
    if (++t.day <= month_days) {
        return t;
    }
    t.day = 1;
    if (++t.month <= 12) {
        return t;
    }
    t.month = 1;
    ++t.year;
    return t;
}

TEST(CronExpression, NextAfterFindsTheSameTimeAsASecondBySecondScan) {
    // Random expressions that fire at least daily, from random starting points: the jumping search must land
    // exactly where a naive scan of every second does.
    std::mt19937 random(42);
    const std::vector<std::string> seconds{"0", "*/15", "10,50", "5-7", "*"};
    const std::vector<std::string> minutes{"0", "*/10", "3,33", "58-59", "*"};
    const std::vector<std::string> hours{"*", "0", "23", "9-17/4", "1,13"};
    // Every day or every other day (odd days: at most two apart), so that a three-day scan always reaches a fire.
    const std::vector<std::string> days{"*", "1-31/2", "?"};
    for (int round = 0; round < 40; ++round) {
        const auto pick = [&](const std::vector<std::string>& options) { return options[random() % options.size()]; };
        const auto text = pick(seconds) + " " + pick(minutes) + " " + pick(hours) + " " + pick(days) + " * *";
        const auto cron = CronExpression::parse(text);
        const CivilTime from{2024 + static_cast<int>(random() % 4),    static_cast<unsigned>(1 + random() % 12),
                             static_cast<unsigned>(1 + random() % 28), static_cast<unsigned>(random() % 24),
                             static_cast<unsigned>(random() % 60),     static_cast<unsigned>(random() % 60)};
        const auto next = cron.next_after(from);
        ASSERT_TRUE(next) << text;
        auto scan = plus_one_second(from);
        for (int steps = 0; steps < 3 * 86'400 && !cron.matches(scan); ++steps) {
            scan = plus_one_second(scan);
        }
        EXPECT_EQ(show(next), show(scan)) << text << " after " << show(from);
    }
}

TEST(CronExpression, BadExpressionsSayWhatIsWrong) {
    EXPECT_EQ(parse_error("* * *"),
              "'* * *' has 3 fields; expected 6 (second minute hour day-of-month month day-of-week) or 5 (without "
              "the second)");
    EXPECT_EQ(parse_error("60 * * * * *"), "second field '60': 60 is out of range 0-59");
    EXPECT_EQ(parse_error("0 0 24 * * *"), "hour field '24': 24 is out of range 0-23");
    EXPECT_EQ(parse_error("0 0 0 0 * *"), "day-of-month field '0': 0 is out of range 1-31");
    EXPECT_EQ(parse_error("0 0 0 * 13 *"), "month field '13': 13 is out of range 1-12");
    EXPECT_EQ(parse_error("0 0 0 * * 8"), "day-of-week field '8': 8 is out of range 0-7");
    EXPECT_EQ(parse_error("0 0 0 * foo *"), "month field 'foo': 'foo' is not a number or a name");
    EXPECT_EQ(parse_error("0 0 5-2 * * *"), "hour field '5-2': the range 5-2 runs backwards");
    EXPECT_EQ(parse_error("0 */0 * * * *"), "minute field '*/0': the step '0' must be a number from 1 to 59");
    EXPECT_EQ(parse_error("0 1,,2 * * * *"), "minute field '1,,2': an empty list item");
    EXPECT_EQ(parse_error("? * * * * *"), "second field '?': '?' is only for the day-of-month and day-of-week fields");
    EXPECT_EQ(parse_error("@often"),
              "unknown macro '@often' (known: @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)");
    EXPECT_EQ(parse_error("0 0 0 30 2 *"), "'0 0 0 30 2 *' can never fire: no chosen month has such a day");
    EXPECT_EQ(parse_error("0 0 0 31 4,6,9,11 *"),
              "'0 0 0 31 4,6,9,11 *' can never fire: no chosen month has such a day");
    // With a restricted weekday the two day fields are alternatives, so this fires on Mondays of February.
    EXPECT_EQ(parse_error("0 0 0 30 2 mon"), "(accepted)");
}

}  // namespace
}  // namespace conveyor::scheduler
