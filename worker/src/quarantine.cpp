#include "quarantine.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace conveyor::worker {
namespace asio = boost::asio;

namespace {

/// The gate is only contended after a worker died; polling keeps the common path to two atomic operations.
constexpr auto kGatePoll = std::chrono::milliseconds(5);

asio::awaitable<void> pause() {
    asio::steady_timer timer(co_await asio::this_coro::executor, kGatePoll);
    co_await timer.async_wait(asio::use_awaitable);
}

}  // namespace

asio::awaitable<Quarantine::History> Quarantine::judge(const std::string& job_id) {
    const auto row =
        co_await pool_.query("SELECT starts, isolated_starts FROM conveyor.job_executions WHERE job_id = $1", job_id);
    History history;
    if (row.rows() == 0) {
        co_return history;
    }
    history.unfinished_starts = static_cast<int>(row.integer(0, 0));
    history.solo_starts = static_cast<int>(row.integer(0, 1));
    if (history.solo_starts >= static_cast<int>(quarantine_after_)) {
        history.decision = Decision::dead_letter;
    } else if (history.unfinished_starts > 0) {
        history.decision = Decision::run_alone;
    }
    co_return history;
}

asio::awaitable<void> Quarantine::record_start(const std::string& job_id, const std::string& queue, bool alone) {
    const int solo = alone ? 1 : 0;
    co_await pool_.query(
        "INSERT INTO conveyor.job_executions (job_id, queue, starts, isolated_starts) VALUES ($1, $2, 1, $3) "
        "ON CONFLICT (job_id) DO UPDATE SET starts = job_executions.starts + 1, "
        "isolated_starts = job_executions.isolated_starts + $3, last_started_at = now()",
        job_id, queue, solo);
}

asio::awaitable<void> Quarantine::record_end(const std::string& job_id) {
    co_await pool_.query("DELETE FROM conveyor.job_executions WHERE job_id = $1", job_id);
}

asio::awaitable<bool> Quarantine::enter_shared(const std::atomic<bool>& abandon) {
    while (!try_enter_shared()) {
        if (abandon) {
            co_return false;
        }
        co_await pause();
    }
    co_return true;
}

asio::awaitable<bool> Quarantine::enter_exclusive(const std::atomic<bool>& abandon) {
    bool expected = false;
    while (!isolating_.compare_exchange_weak(expected, true)) {
        expected = false;
        if (abandon) {
            co_return false;
        }
        co_await pause();
    }
    while (running_ > 0) {
        if (abandon) {
            isolating_ = false;
            co_return false;
        }
        co_await pause();
    }
    co_return true;
}

}  // namespace conveyor::worker
