#include "conveyor/scheduler/zoned_cron.hpp"

#include <date/tz.h>
#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace conveyor::scheduler {

namespace {

using std::chrono::local_seconds;
using std::chrono::seconds;
using std::chrono::sys_seconds;

local_seconds to_local(sys_seconds instant, seconds offset) {
    return local_seconds{instant.time_since_epoch() + offset};
}

CivilTime to_civil(local_seconds time) {
    const auto day = std::chrono::floor<std::chrono::days>(time);
    const std::chrono::year_month_day date{day};
    const std::chrono::hh_mm_ss clock{time - day};
    return {static_cast<int>(date.year()),
            static_cast<unsigned>(date.month()),
            static_cast<unsigned>(date.day()),
            static_cast<unsigned>(clock.hours().count()),
            static_cast<unsigned>(clock.minutes().count()),
            static_cast<unsigned>(clock.seconds().count())};
}

local_seconds from_civil(const CivilTime& time) {
    return local_seconds{std::chrono::local_days{std::chrono::year{time.year} / time.month / time.day} +
                         std::chrono::hours{static_cast<std::int64_t>(time.hour)} +
                         std::chrono::minutes{static_cast<std::int64_t>(time.minute)} +
                         seconds{static_cast<std::int64_t>(time.second)}};
}

std::optional<local_seconds> first_match_from(const CronExpression& cron, local_seconds from) {
    const auto match = cron.next_after(to_civil(from - seconds{1}));
    if (!match) {
        return std::nullopt;
    }
    return from_civil(*match);
}

}  // namespace

TimeZone TimeZone::locate(std::string_view iana_name) {
    // Outside the try: a database that cannot be read is not the caller's unknown name.
    (void)date::get_tzdb();
    try {
        return TimeZone(date::locate_zone(iana_name));
    } catch (const std::runtime_error&) {
        throw std::invalid_argument(fmt::format("unknown time zone \"{}\"", iana_name));
    }
}

std::string_view TimeZone::name() const noexcept {
    return zone_->name();
}

std::optional<sys_seconds> next_fire(const CronExpression& cron, const TimeZone& zone, sys_seconds after) {
    // Walk the periods of constant UTC offset from `after` on. Within one, wall-clock time runs with elapsed time,
    // so the first wall-clock match there is the first fire there; a match past the period's end belongs to a
    // later period, whose offset may differ.
    auto from = after + seconds{1};
    while (true) {
        const auto period = zone.zone_->get_info(from);
        const auto previous = zone.zone_->get_info(period.begin - seconds{1});
        if (from == period.begin && period.offset > previous.offset) {
            // The wall-clock times the clocks jumped over fire when the jump lands.
            const auto skipped = first_match_from(cron, to_local(period.begin, previous.offset));
            if (skipped && *skipped < to_local(period.begin, period.offset)) {
                return period.begin;
            }
        }
        auto search = to_local(from, period.offset);
        if (period.offset < previous.offset && cron.fixed_hour()) {
            // Wall-clock times up to the previous offset's end already passed once, before the clocks fell back.
            search = std::max(search, to_local(period.begin, previous.offset));
        }
        const auto match = first_match_from(cron, search);
        if (!match) {
            return std::nullopt;
        }
        const sys_seconds instant{match->time_since_epoch() - period.offset};
        if (instant < period.end) {
            return instant;
        }
        from = period.end;
    }
}

}  // namespace conveyor::scheduler
