#include "conveyor/scheduler/cron.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <chrono>
#include <stdexcept>
#include <vector>

namespace conveyor::scheduler {

namespace {

constexpr int kSearchYears = 400;  // the Gregorian calendar repeats every 400 years

struct FieldSpec {
    std::string_view name;
    unsigned min;
    unsigned max;
    std::array<std::string_view, 12> names;  ///< names[i] is the value min + i; empty when the field has none
};

constexpr FieldSpec kSeconds{"second", 0, 59, {}};
constexpr FieldSpec kMinutes{"minute", 0, 59, {}};
constexpr FieldSpec kHours{"hour", 0, 23, {}};
constexpr FieldSpec kDaysOfMonth{"day-of-month", 1, 31, {}};
constexpr FieldSpec kMonths{
    "month", 1, 12, {"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}};
// 0-7, both 0 and 7 Sunday; the names cover 0-6.
constexpr FieldSpec kDaysOfWeek{"day-of-week", 0, 7, {"sun", "mon", "tue", "wed", "thu", "fri", "sat"}};

std::string lower(std::string_view text) {
    std::string out(text);
    std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
    return out;
}

/// A value of the field: a number in range, or one of its names.
unsigned parse_value(std::string_view text, const FieldSpec& field, std::string_view whole) {
    const auto name = lower(text);
    for (std::size_t i = 0; i < field.names.size(); ++i) {
        if (!field.names[i].empty() && field.names[i] == name) {
            return field.min + static_cast<unsigned>(i);
        }
    }
    unsigned value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || error != std::errc{} || end != text.data() + text.size()) {
        throw std::invalid_argument(fmt::format("{} field '{}': '{}' is not a number{}", field.name, whole, text,
                                                field.names[0].empty() ? "" : " or a name"));
    }
    if (value < field.min || value > field.max) {
        throw std::invalid_argument(
            fmt::format("{} field '{}': {} is out of range {}-{}", field.name, whole, value, field.min, field.max));
    }
    return value;
}

/// The values one field allows, as a bit per value (bit v = value v).
std::bitset<64> parse_field(std::string_view text, const FieldSpec& field) {
    if (text.empty()) {
        throw std::invalid_argument(fmt::format("{} field is empty", field.name));
    }
    std::bitset<64> allowed;
    std::string_view rest = text;
    while (true) {
        const auto comma = rest.find(',');
        const auto item = rest.substr(0, comma);
        if (item.empty()) {
            throw std::invalid_argument(fmt::format("{} field '{}': an empty list item", field.name, text));
        }
        const auto slash = item.find('/');
        const auto range = item.substr(0, slash);
        unsigned step = 1;
        if (slash != std::string_view::npos) {
            const auto step_text = item.substr(slash + 1);
            const auto [end, error] = std::from_chars(step_text.data(), step_text.data() + step_text.size(), step);
            if (step_text.empty() || error != std::errc{} || end != step_text.data() + step_text.size() || step == 0 ||
                step > field.max) {
                throw std::invalid_argument(fmt::format("{} field '{}': the step '{}' must be a number from 1 to {}",
                                                        field.name, text, step_text, field.max));
            }
        }
        unsigned first = field.min;
        unsigned last = field.max;
        if (range != "*" && range != "?") {
            const auto dash = range.find('-');
            first = parse_value(range.substr(0, dash), field, text);
            if (dash != std::string_view::npos) {
                last = parse_value(range.substr(dash + 1), field, text);
                if (last < first) {
                    throw std::invalid_argument(
                        fmt::format("{} field '{}': the range {}-{} runs backwards", field.name, text, first, last));
                }
            } else if (slash == std::string_view::npos) {
                last = first;  // a single value; "a/n" means from a to the end, every n
            }
        } else if (range == "?" && field.name != kDaysOfMonth.name && field.name != kDaysOfWeek.name) {
            throw std::invalid_argument(fmt::format(
                "{} field '{}': '?' is only for the day-of-month and day-of-week fields", field.name, text));
        }
        for (unsigned value = first; value <= last; value += step) {
            allowed.set(value);
        }
        if (comma == std::string_view::npos) {
            break;
        }
        rest = rest.substr(comma + 1);
    }
    return allowed;
}

template <std::size_t N>
std::bitset<N> narrow(const std::bitset<64>& wide) {
    std::bitset<N> narrowed;
    for (std::size_t i = 0; i < N; ++i) {
        narrowed[i] = wide[i];
    }
    return narrowed;
}

std::string_view expand_macro(std::string_view text) {
    const auto name = lower(text);
    if (name == "@yearly" || name == "@annually") {
        return "0 0 0 1 1 *";
    }
    if (name == "@monthly") {
        return "0 0 0 1 * *";
    }
    if (name == "@weekly") {
        return "0 0 0 * * 0";
    }
    if (name == "@daily" || name == "@midnight") {
        return "0 0 0 * * *";
    }
    if (name == "@hourly") {
        return "0 0 * * * *";
    }
    throw std::invalid_argument(fmt::format(
        "unknown macro '{}' (known: @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)", text));
}

unsigned days_in_month(int year, unsigned month) {
    return static_cast<unsigned>(
        static_cast<unsigned>(std::chrono::year_month_day_last(std::chrono::year(year),
                                                               std::chrono::month_day_last(std::chrono::month(month)))
                                  .day()));
}

unsigned weekday_of(int year, unsigned month, unsigned day) {
    const std::chrono::sys_days date =
        std::chrono::year_month_day(std::chrono::year(year), std::chrono::month(month), std::chrono::day(day));
    return std::chrono::weekday(date).c_encoding();
}

/// The smallest allowed value >= from, or nullopt.
template <std::size_t N>
std::optional<unsigned> first_at_or_after(const std::bitset<N>& allowed, unsigned from) {
    for (unsigned value = from; value < N; ++value) {
        if (allowed[value]) {
            return value;
        }
    }
    return std::nullopt;
}

}  // namespace

CronExpression CronExpression::parse(std::string_view text) {
    CronExpression expression;
    expression.text_ = std::string(text);
    std::string_view source = text;
    while (!source.empty() && std::isspace(static_cast<unsigned char>(source.front())) != 0) {
        source.remove_prefix(1);
    }
    while (!source.empty() && std::isspace(static_cast<unsigned char>(source.back())) != 0) {
        source.remove_suffix(1);
    }
    if (source.starts_with('@')) {
        source = expand_macro(source);
    }
    std::vector<std::string_view> fields;
    for (std::size_t at = 0; at < source.size();) {
        const auto start = source.find_first_not_of(" \t", at);
        if (start == std::string_view::npos) {
            break;
        }
        const auto end = std::min(source.find_first_of(" \t", start), source.size());
        fields.push_back(source.substr(start, end - start));
        at = end;
    }
    if (fields.size() == 5) {
        fields.insert(fields.begin(), "0");
    } else if (fields.size() != 6) {
        throw std::invalid_argument(fmt::format(
            "'{}' has {} fields; expected 6 (second minute hour day-of-month month day-of-week) or 5 (without the "
            "second)",
            text, fields.size()));
    }
    expression.seconds_ = narrow<60>(parse_field(fields[0], kSeconds));
    expression.minutes_ = narrow<60>(parse_field(fields[1], kMinutes));
    expression.hours_ = narrow<24>(parse_field(fields[2], kHours));
    expression.days_of_month_ = narrow<32>(parse_field(fields[3], kDaysOfMonth));
    expression.months_ = narrow<13>(parse_field(fields[4], kMonths));
    auto weekdays = parse_field(fields[5], kDaysOfWeek);
    if (weekdays[7]) {
        weekdays.set(0);  // 7 is Sunday too
    }
    expression.days_of_week_ = narrow<7>(weekdays);
    expression.day_of_month_star_ = fields[3].starts_with('*') || fields[3].starts_with('?');
    expression.day_of_week_star_ = fields[5].starts_with('*') || fields[5].starts_with('?');

    // A day of the month that no chosen month has (30 February) can never fire, unless a restricted weekday
    // field offers days of its own (the two are then alternatives).
    if (expression.day_of_week_star_) {
        bool possible = false;
        for (unsigned month = 1; month <= 12 && !possible; ++month) {
            const auto longest = days_in_month(2000, month);  // a leap year: 29 February exists
            for (unsigned day = 1; day <= longest && !possible; ++day) {
                possible = expression.months_[month] && expression.days_of_month_[day];
            }
        }
        if (!possible) {
            throw std::invalid_argument(fmt::format("'{}' can never fire: no chosen month has such a day", text));
        }
    }
    return expression;
}

bool CronExpression::day_matches(int year, unsigned month, unsigned day) const {
    if (day > days_in_month(year, month)) {
        return false;
    }
    const bool by_month_day = days_of_month_[day];
    const bool by_weekday = days_of_week_[weekday_of(year, month, day)];
    if (day_of_month_star_ || day_of_week_star_) {
        return by_month_day && by_weekday;
    }
    return by_month_day || by_weekday;
}

bool CronExpression::matches(const CivilTime& time) const {
    return time.month >= 1 && time.month <= 12 && months_[time.month] && time.hour < 24 && hours_[time.hour] &&
           time.minute < 60 && minutes_[time.minute] && time.second < 60 && seconds_[time.second] && time.day >= 1 &&
           day_matches(time.year, time.month, time.day);
}

std::optional<CivilTime> CronExpression::next_after(const CivilTime& after) const {
    // Start one second later, then move each field forward to its next allowed value, largest field first;
    // moving a field resets the smaller ones to their first allowed value.
    CivilTime t = after;
    t.second += 1;
    if (t.second == 60) {
        t.second = 0;
        t.minute += 1;
    }
    if (t.minute == 60) {
        t.minute = 0;
        t.hour += 1;
    }
    if (t.hour == 24) {
        t.hour = 0;
        t.day += 1;
    }
    if (t.day > days_in_month(t.year, t.month)) {
        t.day = 1;
        t.month += 1;
    }
    if (t.month == 13) {
        t.month = 1;
        t.year += 1;
    }
    const int last_year = after.year + kSearchYears;
    while (t.year <= last_year) {
        if (const auto month = first_at_or_after(months_, t.month); !month) {
            t = {t.year + 1, 1, 1, 0, 0, 0};
            continue;
        } else if (*month != t.month) {
            t = {t.year, *month, 1, 0, 0, 0};
        }
        if (!day_matches(t.year, t.month, t.day)) {
            t.day += 1;
            t.hour = t.minute = t.second = 0;
            if (t.day > days_in_month(t.year, t.month)) {
                t.day = 1;
                if (++t.month == 13) {
                    t = {t.year + 1, 1, 1, 0, 0, 0};
                }
            }
            continue;
        }
        if (const auto hour = first_at_or_after(hours_, t.hour); !hour) {
            t.hour = 24;  // past the day's last allowed hour: the next day
        } else if (*hour != t.hour) {
            t.hour = *hour;
            t.minute = t.second = 0;
        }
        if (t.hour < 24) {
            if (const auto minute = first_at_or_after(minutes_, t.minute); !minute) {
                t.minute = 60;
            } else if (*minute != t.minute) {
                t.minute = *minute;
                t.second = 0;
            }
        }
        if (t.hour < 24 && t.minute < 60) {
            if (const auto second = first_at_or_after(seconds_, t.second); second) {
                t.second = *second;
                return t;
            }
            t.second = 0;
            t.minute += 1;
            continue;  // the next minute, checked from the top
        }
        if (t.hour < 24) {
            t.minute = t.second = 0;
            t.hour += 1;
            continue;
        }
        t.hour = t.minute = t.second = 0;
        t.day += 1;
        if (t.day > days_in_month(t.year, t.month)) {
            t.day = 1;
            if (++t.month == 13) {
                t = {t.year + 1, 1, 1, 0, 0, 0};
            }
        }
    }
    return std::nullopt;
}

}  // namespace conveyor::scheduler
