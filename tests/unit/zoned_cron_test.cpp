#include "conveyor/scheduler/zoned_cron.hpp"

#include <date/tz.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace conveyor::scheduler {
namespace {

using std::chrono::sys_seconds;
using namespace std::chrono_literals;

/// "YYYY-MM-DD hh:mm:ss" in UTC.
sys_seconds utc(const std::string& text) {
    int year = 0;
    unsigned month = 0;
    unsigned day = 0;
    int hour = 0;
    int minute = 0;
    int second = 0;
    if (std::sscanf(text.c_str(), "%d-%u-%u %d:%d:%d", &year, &month, &day, &hour, &minute, &second) != 6) {
        throw std::invalid_argument("bad test time " + text);
    }
    return std::chrono::sys_days{std::chrono::year{year} / month / day} + std::chrono::hours{hour} +
           std::chrono::minutes{minute} + std::chrono::seconds{second};
}

std::string show(const std::optional<sys_seconds>& time) {
    return time ? date::format("%F %T", *time) : "never";
}

/// The next `count` fire instants after `from` (UTC), each found from the one before, as UTC text.
std::vector<std::string> fires(const std::string& expression, const std::string& zone, const std::string& from,
                               int count) {
    const auto cron = CronExpression::parse(expression);
    const auto time_zone = TimeZone::locate(zone);
    std::vector<std::string> times;
    std::optional<sys_seconds> time = utc(from);
    for (int i = 0; i < count; ++i) {
        time = next_fire(cron, time_zone, *time);
        times.push_back(show(time));
        if (!time) {
            break;
        }
    }
    return times;
}

std::string locate_error(const std::string& name) {
    try {
        (void)TimeZone::locate(name);
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "(found)";
}

TEST(ZonedCron, UtcFiresAtTheCivilTimesStrictlyAfterTheGivenInstant) {
    EXPECT_EQ(fires("*/15 * * * *", "UTC", "2026-01-01 10:07:30", 3),
              (std::vector<std::string>{"2026-01-01 10:15:00", "2026-01-01 10:30:00", "2026-01-01 10:45:00"}));
    EXPECT_EQ(fires("*/20 * * * * *", "UTC", "2026-01-01 23:59:30", 2),
              (std::vector<std::string>{"2026-01-01 23:59:40", "2026-01-02 00:00:00"}));
    EXPECT_EQ(fires("30 2 * * *", "UTC", "2026-03-29 02:29:59", 2),
              (std::vector<std::string>{"2026-03-29 02:30:00", "2026-03-30 02:30:00"}));
    EXPECT_EQ(fires("30 2 * * *", "UTC", "2026-03-29 02:30:00", 1), (std::vector<std::string>{"2026-03-30 02:30:00"}));
}

TEST(ZonedCron, TimeZonesAreLocatedByIanaName) {
    EXPECT_EQ(TimeZone::locate("UTC").name(), "UTC");
    EXPECT_EQ(TimeZone::locate("Europe/Berlin").name(), "Europe/Berlin");
    EXPECT_EQ(TimeZone::locate("Europe/Berlin"), TimeZone::locate("Europe/Berlin"));
    EXPECT_FALSE(TimeZone::locate("Europe/Berlin") == TimeZone::locate("UTC"));
}

TEST(ZonedCron, AnUnknownTimeZoneIsRefusedByName) {
    EXPECT_EQ(locate_error("Europe/Berln"), "unknown time zone \"Europe/Berln\"");
    EXPECT_EQ(locate_error("europe/berlin"), "unknown time zone \"europe/berlin\"");
    EXPECT_EQ(locate_error(""), "unknown time zone \"\"");
}

// Europe/Berlin springs forward on 2026-03-29 at 01:00 UTC: 02:00 CET (UTC+1) becomes 03:00 CEST (UTC+2).
TEST(ZonedCron, SpringForwardFiresADailyJobInTheGapWhenTheGapEnds) {
    EXPECT_EQ(fires("30 2 * * *", "Europe/Berlin", "2026-03-27 12:00:00", 3),
              (std::vector<std::string>{"2026-03-28 01:30:00",     // 02:30 CET
                                        "2026-03-29 01:00:00",     // 03:00 CEST: 02:30 does not exist
                                        "2026-03-30 00:30:00"}));  // 02:30 CEST
    // Every minute of the skipped hour maps to 03:00 CEST, which fires once.
    EXPECT_EQ(fires("* 2 * * *", "Europe/Berlin", "2026-03-29 00:58:00", 3),
              (std::vector<std::string>{"2026-03-29 01:00:00", "2026-03-30 00:00:00", "2026-03-30 00:01:00"}));
}

TEST(ZonedCron, SpringForwardNeitherFiresInsideTheGapNorTwiceAtItsEnd) {
    const std::vector<std::string> quarters{"2026-03-29 00:45:00",  // 01:45 CET
                                            "2026-03-29 01:00:00",  // 03:00 CEST, also standing for 02:00-02:45
                                            "2026-03-29 01:15:00", "2026-03-29 01:30:00"};
    EXPECT_EQ(fires("*/15 * * * *", "Europe/Berlin", "2026-03-29 00:30:00", 4), quarters);
    EXPECT_EQ(fires("0 */15 * * * *", "Europe/Berlin", "2026-03-29 00:30:00", 4), quarters);
    // 02:30 does not exist, so it fires at the gap's end, and 03:30 CEST still fires half an hour later.
    EXPECT_EQ(fires("30 * * * *", "Europe/Berlin", "2026-03-29 00:00:00", 3),
              (std::vector<std::string>{"2026-03-29 00:30:00", "2026-03-29 01:00:00", "2026-03-29 01:30:00"}));
}

// Europe/Berlin falls back on 2026-10-25 at 01:00 UTC: 03:00 CEST (UTC+2) becomes 02:00 CET (UTC+1), so 02:00-02:59
// runs twice, from 00:00 to 00:59 UTC and from 01:00 to 01:59 UTC.
TEST(ZonedCron, FallBackFiresAFixedHourOnceAtTheFirstOccurrence) {
    EXPECT_EQ(fires("30 2 * * *", "Europe/Berlin", "2026-10-24 00:00:00", 3),
              (std::vector<std::string>{"2026-10-24 00:30:00",     // 02:30 CEST
                                        "2026-10-25 00:30:00",     // 02:30 CEST, the first of the two
                                        "2026-10-26 01:30:00"}));  // 02:30 CET
    // Asked from between the two occurrences, it skips the second.
    EXPECT_EQ(fires("30 2 * * *", "Europe/Berlin", "2026-10-25 00:30:00", 1),
              (std::vector<std::string>{"2026-10-26 01:30:00"}));
    EXPECT_EQ(fires("*/15 2 * * *", "Europe/Berlin", "2026-10-25 00:20:00", 3),
              (std::vector<std::string>{"2026-10-25 00:30:00", "2026-10-25 00:45:00", "2026-10-26 01:00:00"}));
}

TEST(ZonedCron, FallBackFiresAnHourFieldOfSeveralHoursInBothPasses) {
    EXPECT_EQ(fires("0 * * * *", "Europe/Berlin", "2026-10-24 23:30:00", 3),
              (std::vector<std::string>{"2026-10-25 00:00:00",     // 02:00 CEST
                                        "2026-10-25 01:00:00",     // 02:00 CET
                                        "2026-10-25 02:00:00"}));  // 03:00 CET
    EXPECT_EQ(fires("*/15 * * * *", "Europe/Berlin", "2026-10-24 23:50:00", 9),
              (std::vector<std::string>{"2026-10-25 00:00:00", "2026-10-25 00:15:00", "2026-10-25 00:30:00",
                                        "2026-10-25 00:45:00", "2026-10-25 01:00:00", "2026-10-25 01:15:00",
                                        "2026-10-25 01:30:00", "2026-10-25 01:45:00", "2026-10-25 02:00:00"}));
    EXPECT_EQ(fires("30 1,2 * * *", "Europe/Berlin", "2026-10-24 23:00:00", 4),
              (std::vector<std::string>{"2026-10-24 23:30:00",     // 01:30 CEST
                                        "2026-10-25 00:30:00",     // 02:30 CEST
                                        "2026-10-25 01:30:00",     // 02:30 CET
                                        "2026-10-26 00:30:00"}));  // 01:30 CET
}

// New York springs forward on 2026-03-08 at 07:00 UTC (02:00 EST, UTC-5, becomes 03:00 EDT, UTC-4) and falls back on
// 2026-11-01 at 06:00 UTC (02:00 EDT becomes 01:00 EST, so 01:00-01:59 runs twice).
TEST(ZonedCron, NewYorkTransitions) {
    EXPECT_EQ(fires("30 2 * * *", "America/New_York", "2026-03-07 00:00:00", 3),
              (std::vector<std::string>{"2026-03-07 07:30:00", "2026-03-08 07:00:00", "2026-03-09 06:30:00"}));
    EXPECT_EQ(fires("30 1 * * *", "America/New_York", "2026-10-31 00:00:00", 3),
              (std::vector<std::string>{"2026-10-31 05:30:00", "2026-11-01 05:30:00", "2026-11-02 06:30:00"}));
    EXPECT_EQ(fires("0 * * * *", "America/New_York", "2026-11-01 04:30:00", 3),
              (std::vector<std::string>{"2026-11-01 05:00:00", "2026-11-01 06:00:00", "2026-11-01 07:00:00"}));
}

// Lord Howe Island shifts by half an hour: on 2026-04-04 at 15:00 UTC 02:00 (UTC+11) becomes 01:30 (UTC+10:30), on
// 2026-10-03 at 15:30 UTC 02:00 (UTC+10:30) becomes 02:30 (UTC+11).
TEST(ZonedCron, LordHoweShiftsByHalfAnHour) {
    EXPECT_EQ(fires("15 2 * * *", "Australia/Lord_Howe", "2026-10-02 00:00:00", 3),
              (std::vector<std::string>{"2026-10-02 15:45:00",     // 02:15 +10:30
                                        "2026-10-03 15:30:00",     // 02:30 +11: 02:15 does not exist
                                        "2026-10-04 15:15:00"}));  // 02:15 +11
    EXPECT_EQ(fires("45 1 * * *", "Australia/Lord_Howe", "2026-04-03 00:00:00", 3),
              (std::vector<std::string>{"2026-04-03 14:45:00", "2026-04-04 14:45:00", "2026-04-05 15:15:00"}));
    EXPECT_EQ(fires("*/15 * * * *", "Australia/Lord_Howe", "2026-04-04 14:20:00", 5),
              (std::vector<std::string>{"2026-04-04 14:30:00",     // 01:30 +11
                                        "2026-04-04 14:45:00",     // 01:45 +11
                                        "2026-04-04 15:00:00",     // 01:30 +10:30
                                        "2026-04-04 15:15:00",     // 01:45 +10:30
                                        "2026-04-04 15:30:00"}));  // 02:00 +10:30
}

TEST(ZonedCron, KolkataIsHalfAnHourOffTheHour) {
    EXPECT_EQ(fires("0 9 * * *", "Asia/Kolkata", "2026-06-01 00:00:00", 2),
              (std::vector<std::string>{"2026-06-01 03:30:00", "2026-06-02 03:30:00"}));
    // Local midnight of 1 January is still the old year in UTC.
    EXPECT_EQ(fires("0 0 1 1 *", "Asia/Kolkata", "2026-06-01 00:00:00", 1),
              (std::vector<std::string>{"2026-12-31 18:30:00"}));
}

TEST(ZonedCron, LeapDaysAndMonthEndsFollowTheZonesCalendar) {
    // Midnight of 29 February in Berlin is still the 28th in UTC.
    EXPECT_EQ(fires("0 0 29 2 *", "Europe/Berlin", "2026-01-01 00:00:00", 2),
              (std::vector<std::string>{"2028-02-28 23:00:00", "2032-02-28 23:00:00"}));
    // Noon on the 31st in New York: EST (UTC-5) in January, EDT (UTC-4) from March.
    EXPECT_EQ(fires("0 12 31 * *", "America/New_York", "2026-01-31 16:59:59", 3),
              (std::vector<std::string>{"2026-01-31 17:00:00", "2026-03-31 16:00:00", "2026-05-31 16:00:00"}));
    // 23:30 in Sydney's summer (UTC+11) is 12:30 UTC the same day; the 29th comes in leap years only.
    EXPECT_EQ(fires("30 23 28,29 2 *", "Australia/Sydney", "2027-01-01 00:00:00", 3),
              (std::vector<std::string>{"2027-02-28 12:30:00", "2028-02-28 12:30:00", "2028-02-29 12:30:00"}));
}

// Sydney leaves daylight saving on Sunday 2026-04-05 (at 16:00 UTC the day before, 03:00 AEDT, UTC+11, becomes
// 02:00 AEST, UTC+10) and enters it on Sunday 2026-10-04 (at 16:00 UTC the day before, 02:00 AEST becomes 03:00
// AEDT).
TEST(ZonedCron, SydneyChangesInTheSouthernSpringAndAutumn) {
    EXPECT_EQ(fires("30 2 * * *", "Australia/Sydney", "2026-04-03 00:00:00", 3),
              (std::vector<std::string>{"2026-04-03 15:30:00", "2026-04-04 15:30:00", "2026-04-05 16:30:00"}));
    EXPECT_EQ(fires("0 * * * *", "Australia/Sydney", "2026-04-04 14:30:00", 3),
              (std::vector<std::string>{"2026-04-04 15:00:00", "2026-04-04 16:00:00", "2026-04-04 17:00:00"}));
    EXPECT_EQ(fires("30 2 * * *", "Australia/Sydney", "2026-10-02 00:00:00", 3),
              (std::vector<std::string>{"2026-10-02 16:30:00", "2026-10-03 16:00:00", "2026-10-04 15:30:00"}));
}

CivilTime civil(date::local_seconds time) {
    const auto day = date::floor<date::days>(time);
    const date::year_month_day ymd{day};
    const date::hh_mm_ss clock{time - day};
    return {static_cast<int>(ymd.year()),
            static_cast<unsigned>(ymd.month()),
            static_cast<unsigned>(ymd.day()),
            static_cast<unsigned>(clock.hours().count()),
            static_cast<unsigned>(clock.minutes().count()),
            static_cast<unsigned>(clock.seconds().count())};
}

/// The fire instants in [begin, end) by the documented rules, found minute by minute with the date library's own
/// conversions: each UTC minute whose wall-clock time matches, except the second occurrence of a repeated time for a
/// fixed hour; and the end of the gap for each wall-clock minute that matches but does not exist.
std::vector<sys_seconds> scan(const CronExpression& cron, const date::time_zone& zone, sys_seconds begin,
                              sys_seconds end) {
    std::set<sys_seconds> found;
    for (auto instant = begin; instant < end; instant += 1min) {
        const auto local = zone.to_local(instant);
        if (!cron.matches(civil(local))) {
            continue;
        }
        const auto info = zone.get_info(local);
        const bool second_occurrence = info.result == date::local_info::ambiguous &&
                                       instant == sys_seconds{(local - info.second.offset).time_since_epoch()};
        if (!(second_occurrence && cron.fixed_hour())) {
            found.insert(instant);
        }
    }
    for (auto local = zone.to_local(begin); local < zone.to_local(end); local += 1min) {
        if (!cron.matches(civil(local))) {
            continue;
        }
        const auto info = zone.get_info(local);
        if (info.result == date::local_info::nonexistent && info.second.begin >= begin && info.second.begin < end) {
            found.insert(info.second.begin);
        }
    }
    return {found.begin(), found.end()};
}

TEST(ZonedCron, AYearOfFireTimesAgreesWithAMinuteByMinuteScan) {
    const auto begin = utc("2026-01-01 00:00:00");
    const auto end = utc("2027-01-01 00:00:00");
    for (const std::string zone_name : {"Europe/Berlin", "America/New_York", "Australia/Lord_Howe"}) {
        for (const std::string expression :
             {"*/7 * * * *", "13 2 * * *", "*/7 1-2 * * *", "0,30 1,2,3 * * *", "*/10 2 * * sun"}) {
            const auto cron = CronExpression::parse(expression);
            const auto zone = TimeZone::locate(zone_name);
            const auto expected = scan(cron, *date::locate_zone(zone_name), begin, end);
            std::vector<sys_seconds> walked;
            for (auto time = next_fire(cron, zone, begin - 1s); time && *time < end;
                 time = next_fire(cron, zone, *time)) {
                walked.push_back(*time);
            }
            ASSERT_FALSE(expected.empty());
            const auto [walked_at, expected_at] =
                std::mismatch(walked.begin(), walked.end(), expected.begin(), expected.end());
            EXPECT_TRUE(walked_at == walked.end() && expected_at == expected.end())
                << expression << " in " << zone_name << ": walked "
                << (walked_at == walked.end() ? "nothing more" : show(*walked_at)) << ", the scan "
                << (expected_at == expected.end() ? "nothing more" : show(*expected_at)) << " after "
                << (walked_at == walked.begin() ? "the start" : show(*std::prev(walked_at)));
        }
    }
}

}  // namespace
}  // namespace conveyor::scheduler
