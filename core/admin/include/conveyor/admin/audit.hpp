#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/json/value.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/pg.hpp"

/// The audit log in conveyor.audit_log: who cancelled, paused, resumed, replayed, purged or applied flow limits,
/// when, and which jobs it touched. The modules that make those changes write its rows in the same transaction
/// (job_control, dead_letters, flow_config), so whichever way in asked (the API, the console, the CLI) is recorded
/// alike; this module reads them.
namespace conveyor::audit {

/// The actions on record, as conveyor.audit_log's CHECK allows them.
[[nodiscard]] bool is_action(std::string_view action) noexcept;

struct Entry {
    std::int64_t id = 0;
    std::string at;  ///< RFC 3339 UTC
    std::string actor;
    std::string action;
    std::string target;
    std::int64_t job_count = 0;
    std::string details;  ///< a JSON object
};

/// Which entries list() returns; every set field narrows it.
struct Filter {
    std::optional<std::string> actor;
    std::optional<std::string> action;
    std::optional<std::string> job_id;  ///< entries that touched this job
    std::int64_t limit = 50;
    std::int64_t before = 0;  ///< entries with a smaller id (the page after one ending there); 0: the newest

    /// Throws std::invalid_argument naming the field: an unknown action, a limit out of 1..1000, a negative cursor.
    void validate() const;
};

/// Newest first.
boost::asio::awaitable<std::vector<Entry>> list(pg::Pool& pool, const Filter& filter);

[[nodiscard]] boost::json::value to_json(const Entry& entry);
/// {"entries": [...], "next_before": id or null}: the cursor of the next page when this one is full.
[[nodiscard]] boost::json::value to_json(const std::vector<Entry>& entries, const Filter& filter);

}  // namespace conveyor::audit
