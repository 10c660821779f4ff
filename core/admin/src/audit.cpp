#include "conveyor/admin/audit.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/parse.hpp>
#include <stdexcept>

namespace conveyor::audit {
namespace asio = boost::asio;
namespace json = boost::json;

namespace {

constexpr std::array<std::string_view, 7> kActions{"cancel", "pause", "resume", "replay", "purge", "apply_flow_limits",
                                                   "run_now"};
constexpr std::int64_t kMaxPage = 1000;

}  // namespace

bool is_action(std::string_view action) noexcept {
    return std::find(kActions.begin(), kActions.end(), action) != kActions.end();
}

void Filter::validate() const {
    if (action && !is_action(*action)) {
        throw std::invalid_argument(fmt::format("action: {} is not one of {}", *action, fmt::join(kActions, ", ")));
    }
    if (limit < 1 || limit > kMaxPage) {
        throw std::invalid_argument(fmt::format("limit: {} is not in 1..{}", limit, kMaxPage));
    }
    if (before < 0) {
        throw std::invalid_argument("before: must be an entry id");
    }
}

asio::awaitable<std::vector<Entry>> list(pg::Pool& pool, const Filter& filter) {
    filter.validate();
    const std::optional<std::int64_t> before = filter.before > 0 ? std::optional(filter.before) : std::nullopt;
    const auto rows = co_await pool.query(
        "SELECT id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), actor, action, target, "
        "cardinality(job_ids), details::text FROM conveyor.audit_log "
        "WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2) "
        "AND ($3::text IS NULL OR job_ids @> ARRAY[$3::text]) AND ($4::bigint IS NULL OR id < $4) "
        "ORDER BY id DESC LIMIT $5",
        filter.actor, filter.action, filter.job_id, before, filter.limit);
    std::vector<Entry> entries;
    entries.reserve(static_cast<std::size_t>(rows.rows()));
    for (int row = 0; row < rows.rows(); ++row) {
        entries.push_back({rows.integer(row, 0), std::string(rows.text(row, 1)), std::string(rows.text(row, 2)),
                           std::string(rows.text(row, 3)), std::string(rows.text(row, 4)), rows.integer(row, 5),
                           std::string(rows.text(row, 6))});
    }
    co_return entries;
}

json::value to_json(const Entry& entry) {
    return json::object{{"id", entry.id},
                        {"at", entry.at},
                        {"actor", entry.actor},
                        {"action", entry.action},
                        {"target", entry.target},
                        {"job_count", entry.job_count},
                        {"details", json::parse(entry.details)}};
}

json::value to_json(const std::vector<Entry>& entries, const Filter& filter) {
    json::array listed;
    for (const auto& entry : entries) {
        listed.push_back(to_json(entry));
    }
    const bool full = static_cast<std::int64_t>(entries.size()) == filter.limit;
    return json::object{{"entries", std::move(listed)},
                        {"next_before", full ? json::value(entries.back().id) : json::value(nullptr)}};
}

}  // namespace conveyor::audit
