#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <string>
#include <string_view>

#include "conveyor/core/batched_calls.hpp"
#include "conveyor/core/batches.hpp"
#include "conveyor/core/job.hpp"
#include "conveyor/core/pg.hpp"
#include "housekeeping.hpp"

namespace conveyor::worker {

/// The ends of batch members: a job with x-conveyor-batch that ends here (succeeded, dead-lettered, cancelled or
/// deduplicated) is recorded before it is acknowledged, so a crash in between leaves it to be redelivered and
/// recorded again (once: by job id), never uncounted. The member that completes a sealed batch enqueues its
/// callback in the same transaction. Ends that arrive together share one statement. Jobs of no batch cost nothing.
class BatchMembers {
  public:
    BatchMembers(pg::Pool& pool, DatabaseHealth& database, const std::atomic<bool>& draining);

    /// Records that the job ended in `state`; waits for the database if it is away. Logged if it cannot (the worker
    /// began draining meanwhile): the member stays uncounted and its batch unfinished.
    boost::asio::awaitable<void> ended(const std::string& batch_id, const std::string& job_id, std::string_view state,
                                       const JobLogger& log);

    /// Runs the statements until cancelled.
    boost::asio::awaitable<void> run();

  private:
    pg::Pool& pool_;
    DatabaseHealth& database_;
    const std::atomic<bool>& draining_;
    BatchedCalls<batches::MemberEnd, bool> records_;
};

}  // namespace conveyor::worker
