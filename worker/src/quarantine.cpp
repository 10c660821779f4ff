#include "quarantine.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;

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
    // Waits without touching running_ (a failed try would wake the suspect waiting for it), then tries: it fails
    // only if another suspect claimed the gate in between.
    const auto open_or_abandoned = [&] { return abandon || !isolating_; };
    while (true) {
        co_await gate_changed_.wait(open_or_abandoned);
        if (abandon) {
            co_return false;
        }
        if (try_enter_shared()) {
            co_return true;
        }
    }
}

asio::awaitable<bool> Quarantine::enter_exclusive(const std::atomic<bool>& abandon) {
    bool claimed = false;
    const auto claimed_or_abandoned = [&] {
        bool expected = false;
        claimed = !abandon && isolating_.compare_exchange_strong(expected, true);
        return claimed || abandon;
    };
    co_await gate_changed_.wait(claimed_or_abandoned);
    if (!claimed) {
        co_return false;
    }
    // Jobs that entered before the claim finish first; none enters after it.
    const auto alone_or_abandoned = [&] { return running_ == 0 || abandon; };
    co_await gate_changed_.wait(alone_or_abandoned);
    if (abandon) {
        leave_exclusive();
        co_return false;
    }
    co_return true;
}

}  // namespace conveyor::worker
