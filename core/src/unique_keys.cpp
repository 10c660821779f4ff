#include "conveyor/core/unique_keys.hpp"

namespace conveyor::unique_keys {
namespace asio = boost::asio;

asio::awaitable<bool> claim(pg::Pool& pool, const std::string& type, const std::string& key,
                            const std::string& job_id) {
    // One statement, so two workers admitting jobs of one key at once are ordered by the row's lock: the second
    // sees the first's claim. An expired claim is taken over; one held by another job is left alone (no row back).
    const auto claimed = co_await pool.query(
        "INSERT INTO conveyor.unique_keys AS held (job_type, unique_key, job_id) VALUES ($1, $2, $3) "
        "ON CONFLICT (job_type, unique_key) DO UPDATE SET job_id = excluded.job_id, claimed_at = now(), "
        "held_until = NULL WHERE held.job_id = excluded.job_id OR held.held_until <= now() RETURNING 1",
        type, key, job_id);
    co_return claimed.rows() == 1;
}

asio::awaitable<void> hold_after_end(pg::Pool& pool, const std::string& type, const std::string& key,
                                     const std::string& job_id, std::chrono::seconds window) {
    co_await pool.query(
        "UPDATE conveyor.unique_keys SET held_until = now() + make_interval(secs => $4) "
        "WHERE job_type = $1 AND unique_key = $2 AND job_id = $3",
        type, key, job_id, static_cast<double>(window.count()));
}

asio::awaitable<void> release(pg::Pool& pool, const std::string& type, const std::string& key,
                              const std::string& job_id) {
    co_await pool.query("DELETE FROM conveyor.unique_keys WHERE job_type = $1 AND unique_key = $2 AND job_id = $3",
                        type, key, job_id);
}

asio::awaitable<std::int64_t> delete_expired(pg::Pool& pool) {
    const auto deleted = co_await pool.query("DELETE FROM conveyor.unique_keys WHERE held_until <= now()");
    co_return deleted.affected();
}

}  // namespace conveyor::unique_keys
