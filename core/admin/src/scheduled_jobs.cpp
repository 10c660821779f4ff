#include "conveyor/admin/scheduled_jobs.hpp"

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

namespace {

/// Runs `change` (a data-modifying statement on the locked row `target`, returning its id as `changed` rows) on a
/// pending job and records it in the audit log as `action` by $2 unless $2 is empty; $1 is the id.
asio::awaitable<ChangeOutcome> change_pending(pg::Pool& pool, const std::string& id, std::string_view by,
                                              std::string_view change, std::string_view action) {
    const auto sql = fmt::format(
        "WITH target AS (SELECT id, state FROM conveyor.scheduled_jobs WHERE id = $1::uuid FOR UPDATE), "
        "changed AS ({}), "
        "audited AS (INSERT INTO conveyor.audit_log (actor, action, target, job_ids) "
        "SELECT $2, '{}', $1, ARRAY[$1] FROM changed WHERE $2 <> '') "
        "SELECT target.state, EXISTS (SELECT 1 FROM changed), "
        "(SELECT count(pg_notify('conveyor_scheduled_jobs', '')) FROM changed) FROM target",
        change, action);
    const auto rows = co_await pool.query(sql, id, by);
    ChangeOutcome outcome;
    if (rows.rows() == 1) {
        outcome.result = rows.text(0, 1) == "t" ? Change::done : Change::not_pending;
        outcome.state = rows.text(0, 0);
    }
    co_return outcome;
}

}  // namespace

asio::awaitable<ChangeOutcome> cancel(pg::Pool& pool, const std::string& id, std::string_view by) {
    return change_pending(pool, id, by,
                          "UPDATE conveyor.scheduled_jobs AS jobs SET state = 'cancelled', "
                          "finished_at = clock_timestamp() FROM target WHERE jobs.id = target.id "
                          "AND target.state = 'pending' RETURNING jobs.id",
                          "cancel");
}

asio::awaitable<ChangeOutcome> run_now(pg::Pool& pool, const std::string& id, std::string_view by) {
    return change_pending(pool, id, by,
                          "UPDATE conveyor.scheduled_jobs AS jobs SET run_at = now() FROM target "
                          "WHERE jobs.id = target.id AND target.state = 'pending' RETURNING jobs.id",
                          "run_now");
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
