#include "conveyor/core/scheduled_jobs.hpp"

#include <array>
#include <cctype>

namespace conveyor::scheduled_jobs {
namespace asio = boost::asio;

bool is_state(std::string_view state) noexcept {
    static constexpr std::array<std::string_view, 4> kStates = {"pending", "published", "cancelled", "failed"};
    for (const auto known : kStates) {
        if (state == known) {
            return true;
        }
    }
    return false;
}

bool is_job_id(std::string_view text) noexcept {
    if (text.size() != 36) {
        return false;
    }
    for (std::size_t i = 0; i < text.size(); ++i) {
        const bool hyphen = i == 8 || i == 13 || i == 18 || i == 23;
        if (hyphen ? text[i] != '-' : std::isxdigit(static_cast<unsigned char>(text[i])) == 0) {
            return false;
        }
    }
    return true;
}

asio::awaitable<pg::Result> list(pg::Pool& pool, const Filter& filter) {
    auto rows = co_await pool.query(
        "SELECT id, type, to_char(run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), state, source, "
        "idempotency_key, correlation_id, payload::text, error, priority FROM conveyor.scheduled_jobs "
        "WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR type = $2) ORDER BY run_at, id LIMIT $3",
        filter.state, filter.type, filter.limit);
    co_return rows;
}

asio::awaitable<CancelOutcome> cancel(pg::Pool& pool, const std::string& id) {
    const auto rows = co_await pool.query(
        "WITH target AS (SELECT id, state FROM conveyor.scheduled_jobs WHERE id = $1::uuid FOR UPDATE), "
        "cancelled AS (UPDATE conveyor.scheduled_jobs AS jobs SET state = 'cancelled', "
        "finished_at = clock_timestamp() FROM target WHERE jobs.id = target.id AND target.state = 'pending' "
        "RETURNING jobs.id) "
        "SELECT target.state, EXISTS (SELECT 1 FROM cancelled) FROM target",
        id);
    CancelOutcome outcome;
    if (rows.rows() == 1) {
        outcome.result = rows.text(0, 1) == "t" ? Cancel::cancelled : Cancel::not_pending;
        outcome.state = rows.text(0, 0);
    }
    co_return outcome;
}

asio::awaitable<pg::Result> list_schedules(pg::Pool& pool) {
    auto rows = co_await pool.query(
        "SELECT name, cron, timezone, type, payload::text, misfire, "
        "to_char(next_fire_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
        "to_char(last_fire_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), fired, misfired "
        "FROM conveyor.schedules WHERE active ORDER BY name");
    co_return rows;
}

}  // namespace conveyor::scheduled_jobs
