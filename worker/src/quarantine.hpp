#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <string>
#include <utility>

#include "conveyor/core/async_condition.hpp"
#include "conveyor/core/pg.hpp"

namespace conveyor::worker {

/// Poison-message quarantine. When a worker process dies, the broker redelivers everything it held: the job
/// that killed it, the jobs that ran beside it, and the prefetched jobs that never started. Only the first kind
/// may be quarantined. So a redelivered job records each start in conveyor.job_executions before it runs (and
/// clears the record when it finishes): a job that comes back with an unfinished start was running when a
/// worker died. It then runs alone in its worker; dying while running alone is proof, and after
/// `quarantine_after` such deaths the job is dead-lettered (delivery_limit) instead of run. Jobs that were only
/// prefetched never have a start recorded, and jobs that merely ran beside a poison job finish their solo run.
class Quarantine {
  public:
    enum class Decision {
        run,          ///< no unfinished start on record: run as usual
        run_alone,    ///< running when a worker died: run with no other job beside it
        dead_letter,  ///< killed its worker while running alone, quarantine_after times
    };

    struct History {
        Decision decision = Decision::run;
        int unfinished_starts = 0;
        int solo_starts = 0;
    };

    Quarantine(pg::Pool& pool, unsigned quarantine_after) : pool_(pool), quarantine_after_(quarantine_after) {}

    /// What to do with a redelivered job, from its record.
    boost::asio::awaitable<History> judge(const std::string& job_id);
    /// Records, durably, that a redelivered job starts now (alone or not).
    boost::asio::awaitable<void> record_start(const std::string& job_id, const std::string& queue, bool alone);
    /// The job ended without killing its worker: forget its starts.
    boost::asio::awaitable<void> record_end(const std::string& job_id);

    /// Every job runs inside the gate: shared for ordinary jobs, exclusive for a suspect. Entering waits while a
    /// suspect runs or waits to run, woken as the gate changes, and returns false at once if `abandon` is set
    /// (whoever sets it calls wake_waiters()). try_enter_shared is the common path: no suspect about, no waiting.
    [[nodiscard]] bool try_enter_shared() noexcept {
        // Announce first, then look: a suspect that sets isolating_ after this sees running_ > 0 and waits.
        ++running_;
        if (!isolating_) {
            return true;
        }
        leave_shared();
        return false;
    }
    boost::asio::awaitable<bool> enter_shared(const std::atomic<bool>& abandon);
    void leave_shared() noexcept {
        // Only a suspect waits for running_, and only for its end.
        if (--running_ == 0) {
            gate_changed_.notify_all();
        }
    }
    boost::asio::awaitable<bool> enter_exclusive(const std::atomic<bool>& abandon);
    void leave_exclusive() noexcept {
        isolating_ = false;
        gate_changed_.notify_all();
    }
    /// Makes the jobs waiting at the gate look at their `abandon` flag.
    void wake_waiters() noexcept { gate_changed_.notify_all(); }

    /// Leaves the gate when the job is done, or on any early exit.
    class Pass {
      public:
        Pass(Quarantine& quarantine, bool exclusive) noexcept : quarantine_(&quarantine), exclusive_(exclusive) {}
        ~Pass() { release(); }
        Pass(Pass&& other) noexcept
            : quarantine_(std::exchange(other.quarantine_, nullptr)), exclusive_(other.exclusive_) {}
        Pass(const Pass&) = delete;
        Pass& operator=(const Pass&) = delete;
        Pass& operator=(Pass&&) = delete;
        void release() noexcept {
            if (quarantine_ != nullptr) {
                exclusive_ ? quarantine_->leave_exclusive() : quarantine_->leave_shared();
                quarantine_ = nullptr;
            }
        }

      private:
        Quarantine* quarantine_;
        bool exclusive_;
    };

  private:
    pg::Pool& pool_;
    unsigned quarantine_after_;
    std::atomic<int> running_{0};
    std::atomic<bool> isolating_{false};
    AsyncCondition gate_changed_;
};

}  // namespace conveyor::worker
