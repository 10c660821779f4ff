#pragma once

#include <chrono>
#include <optional>
#include <string_view>

#include "conveyor/scheduler/cron.hpp"

/// Cron schedules in an IANA time zone: the expression is matched against the zone's wall-clock time and fires at
/// instants (UTC). Daylight-saving transitions follow these rules:
///
/// - A wall-clock time that does not exist (the gap when clocks spring forward) fires at the instant the gap ends:
///   a daily 02:30 job in Europe/Berlin fires at 03:00 CEST on the last Sunday of March, so a daily job never
///   silently skips a day. All the schedule's times inside one gap map to that instant, which fires once; so
///   `30 * * * *` fires at 03:00 and 03:30 CEST that day.
/// - A wall-clock time that occurs twice (the repeated hour when clocks fall back) fires once, at its first
///   occurrence, when the schedule's hour field is a single value (`30 2 * * *`). When the hour field matches more
///   than one hour (`*`, a list, a range, a step) the schedule follows elapsed time and fires in both occurrences:
///   `*/15 * * * *` fires at every real quarter hour, eight times in the repeated hour's two passes. This is
///   cronie's rule.
/// - next_fire() is strictly after the instant it is given, so feeding each result back in yields strictly
///   increasing instants and never the same one twice.
namespace date {
class time_zone;
}

namespace conveyor::scheduler {

/// An IANA time zone from the operating system's tz database (/usr/share/zoneinfo), through Howard Hinnant's date
/// library since libstdc++ 12 has no std::chrono::tzdb. That library reads the transitions the zone files list but
/// not the rule that continues them; Debian's files list them up to 2037, so later instants keep the offset in
/// force after 2037's last transition.
class TimeZone {
  public:
    /// Throws std::invalid_argument for a name the database does not have, e.g. `unknown time zone "Europe/Berln"`.
    [[nodiscard]] static TimeZone locate(std::string_view iana_name);

    [[nodiscard]] std::string_view name() const noexcept;

    friend bool operator==(const TimeZone&, const TimeZone&) = default;

  private:
    explicit TimeZone(const date::time_zone* zone) : zone_(zone) {}

    friend std::optional<std::chrono::sys_seconds> next_fire(const CronExpression& cron, const TimeZone& zone,
                                                             std::chrono::sys_seconds after);

    const date::time_zone* zone_;  ///< owned by the database, which lives as long as the program
};

/// The first fire instant strictly after `after`, by the rules above; nullopt if the schedule has no fire within
/// 400 years (CronExpression::next_after). Costs a few zone look-ups and one CronExpression::next_after() per
/// daylight-saving transition crossed, so it is cheap enough to call on every scheduler tick.
[[nodiscard]] std::optional<std::chrono::sys_seconds> next_fire(const CronExpression& cron, const TimeZone& zone,
                                                                std::chrono::sys_seconds after);

}  // namespace conveyor::scheduler
