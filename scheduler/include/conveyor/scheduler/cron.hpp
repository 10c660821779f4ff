#pragma once

#include <bitset>
#include <compare>
#include <optional>
#include <string>
#include <string_view>

/// Cron expressions, parsed and evaluated over civil (wall-clock) time. No packaged C++ cron library exists;
/// the syntax is Vixie cron's, with an optional leading seconds field.
namespace conveyor::scheduler {

/// A wall-clock time in some time zone, to the second.
struct CivilTime {
    int year = 1970;
    unsigned month = 1;   ///< 1-12
    unsigned day = 1;     ///< 1-31
    unsigned hour = 0;    ///< 0-23
    unsigned minute = 0;  ///< 0-59
    unsigned second = 0;  ///< 0-59

    auto operator<=>(const CivilTime&) const = default;
};

/// Six fields "second minute hour day-of-month month day-of-week", or the classic five (the second is then 0).
/// Each field takes `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`, and comma-separated lists of
/// those; months and weekdays also take names (JAN-DEC, SUN-SAT); weekday 7 is Sunday like 0; `?` means `*` in
/// the day fields. The macros @yearly (@annually), @monthly, @weekly, @daily (@midnight) and @hourly stand for
/// their usual expressions. As in Vixie cron, when both day fields are restricted a day matches if either
/// matches; a field that starts with `*` counts as unrestricted.
class CronExpression {
  public:
    /// Throws std::invalid_argument naming the field and what is wrong with it, or saying that the expression
    /// can never fire (e.g. "0 0 0 30 2 *").
    [[nodiscard]] static CronExpression parse(std::string_view text);

    [[nodiscard]] bool matches(const CivilTime& time) const;

    /// The first matching civil time strictly after `after`; nullopt if none within 400 years (a calendar
    /// cycle), which parse() already rules out except for combinations like "29 February on a Monday" that
    /// are merely rare.
    [[nodiscard]] std::optional<CivilTime> next_after(const CivilTime& after) const;

    [[nodiscard]] const std::string& text() const noexcept { return text_; }

    /// Whether the hour field allows exactly one hour: such a schedule fires only once when a fall-back repeats
    /// that hour (zoned_cron.hpp).
    [[nodiscard]] bool fixed_hour() const noexcept { return hours_.count() == 1; }

  private:
    [[nodiscard]] bool day_matches(int year, unsigned month, unsigned day) const;

    std::string text_;
    std::bitset<60> seconds_;
    std::bitset<60> minutes_;
    std::bitset<24> hours_;
    std::bitset<32> days_of_month_;  ///< bits 1-31
    std::bitset<13> months_;         ///< bits 1-12
    std::bitset<7> days_of_week_;    ///< bit 0 = Sunday
    bool day_of_month_star_ = true;
    bool day_of_week_star_ = true;
};

}  // namespace conveyor::scheduler
