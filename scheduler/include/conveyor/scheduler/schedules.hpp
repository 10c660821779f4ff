#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/scheduler/catalogue.hpp"
#include "conveyor/scheduler/cron.hpp"
#include "conveyor/scheduler/zoned_cron.hpp"

namespace conveyor::scheduler {

/// What happens to fire times that were missed (no replica ran, or the database was unreachable) by more than the
/// schedule's misfire grace: catch_up enqueues the latest max_catch_up of them late, skip drops them. Either way
/// they are counted (conveyor_schedule_misfired_total) and logged.
enum class Misfire { catch_up, skip };

[[nodiscard]] std::string_view to_string(Misfire misfire) noexcept;

/// One entry of the schedules file.
struct Schedule {
    std::string name;
    CronExpression cron;
    TimeZone zone = TimeZone::locate("UTC");
    std::string type;
    /// The job's payload, compact JSON.
    std::string payload;
    /// The priority band of each fire's job: high, normal or low.
    std::string priority = "normal";
    /// A unique key for every fire's job, if not empty: a fire while the previous fire's job is still queued or
    /// running (or within unique_for after it ended) is discarded as deduplicated. Keeps a slow job from overlapping.
    std::string unique_key;
    std::chrono::seconds unique_for{0};
    Misfire misfire = Misfire::catch_up;
    unsigned max_catch_up = 10;
    /// A fire time enqueued later than this after its time counts as missed.
    std::chrono::milliseconds misfire_grace{5'000};
};

/// Parses a schedules document:
///
///     schedules:
///       - name: nightly-rebuild
///         cron: "0 30 2 * * *"
///         timezone: Europe/Berlin       # default UTC
///         type: projections.rebuild
///         payload: {projection: daily_sales}   # default {}
///         misfire: catch_up             # or skip
///         max_catch_up: 10
///         misfire_grace: 5s
///         priority: low                 # default normal
///         unique_key: nightly-rebuild   # no overlapping runs; default none
///         unique_for: 10m               # the key's window after a run ends; default 0
///
/// Every payload is checked against the catalogue. Throws std::invalid_argument naming the origin, the line and the
/// schedule, and what is wrong.
[[nodiscard]] std::vector<Schedule> parse_schedules(std::string_view yaml, std::string_view origin,
                                                    const JobCatalogue& catalogue);

/// Reads and parses a schedules file; throws std::invalid_argument if it cannot be read or is invalid.
[[nodiscard]] std::vector<Schedule> load_schedules(const std::string& path, const JobCatalogue& catalogue);

}  // namespace conveyor::scheduler
