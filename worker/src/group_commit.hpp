#pragma once

#include <prometheus/counter.h>
#include <prometheus/histogram.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "conveyor/core/async_condition.hpp"
#include "conveyor/core/pg.hpp"

/// Group commit: transactional jobs that are ready at the same moment share one transaction and its commit (one
/// fsync), each inside a savepoint of its own, so that one job's failure undoes only that job. A lane holds one
/// connection; it begins a group and claims the waiting jobs in the inbox; each then has its turn in arrival order
/// (a savepoint, then the job's own statements) and, as it ends, releases or rolls back its savepoint and passes
/// the turn to the next. The lane commits once no job waits or the group is full. Only then do the group's jobs
/// learn that their effects are durable, and only then are they acknowledged.
namespace conveyor::worker {

struct GroupCommitSettings {
    /// Jobs in one group at most: each holds a subtransaction, and more than 64 overflow every backend's
    /// subtransaction cache (DESIGN.md).
    std::size_t max_members = 64;
    /// Groups under way at once, each on a connection of its own: while one commits (waits for its fsync), the
    /// next runs the jobs that arrived meanwhile.
    std::size_t lanes = 2;
    /// Groups running their jobs at once (open), the others committing. With one, a job waits only for the locks of
    /// groups that are committing, which wait for nothing but their fsync, so one worker's groups cannot deadlock
    /// each other. With more, the database works on several groups' statements at once, but jobs that touch the
    /// same rows wait for each other across groups; after a job is taken out of its group for such a wait, only one
    /// group opens for a while (`narrowed`).
    std::size_t open_groups = 1;
    /// How long a group with room left waits for one more job before it commits; zero commits as soon as no job
    /// waits.
    std::chrono::microseconds wait{0};
    /// lock_timeout of a group's transaction: a job that waits this long for a row lock is not stuck behind its
    /// own statements but behind another group (which holds the locks of all its jobs until it commits). It is
    /// taken out of its group and run again in a transaction of its own.
    std::chrono::milliseconds lock_wait{100};
    /// How long only one group opens after a job was taken out of its group; doubled, up to `longest_narrowed`,
    /// whenever a conflict comes again soon after more groups opened.
    std::chrono::milliseconds narrowed{1'000};
    std::chrono::milliseconds longest_narrowed{60'000};
};

/// How a job's place in a group ended.
enum class GroupVerdict {
    committed,  ///< its effects committed with the group
    undone,     ///< it asked for its savepoint to be rolled back: its own failure, the group is not concerned
    run_alone,  ///< its group failed, or a lock conflict that grouping may have caused undid it: run it again alone
};

/// How a job ends its turn.
enum class TurnEnd {
    keep,       ///< release the savepoint: its effects commit with the group
    undo,       ///< roll the savepoint back: the job failed on its own
    run_alone,  ///< roll the savepoint back and run the job again in its own transaction once the group has ended
};

/// Where a GroupCommit reports what it does; any may be null.
struct GroupCommitMetrics {
    prometheus::Histogram* jobs = nullptr;     ///< jobs per committed group
    prometheus::Counter* failed = nullptr;     ///< groups whose transaction failed
    prometheus::Counter* taken_out = nullptr;  ///< jobs taken out of their group for a lock conflict
};

class GroupCommit {
    struct Member;
    struct Relay;

  public:
    /// A job's turn in a group: the group's transaction is the job's until end().
    class Turn {
      public:
        explicit Turn(std::shared_ptr<Member> member) noexcept : member_(std::move(member)) {}
        Turn(Turn&&) noexcept = default;
        Turn& operator=(Turn&&) noexcept = default;
        Turn(const Turn&) = delete;
        Turn& operator=(const Turn&) = delete;
        /// A turn not ended is undone (the job's coroutine unwound).
        ~Turn();

        /// False when the inbox has the job already: it is a duplicate, and runs nothing.
        [[nodiscard]] bool claimed() const noexcept;
        [[nodiscard]] pg::Transaction& transaction() const noexcept;
        /// Ends the turn. `keep` and `run_alone` wait for the group's end, which cancellation cannot cut short (the
        /// commit decides what happened to the job); `undo` returns at once. A kept job's `after_commit` hooks run
        /// right after the group's commit, before any job of the group learns of it.
        boost::asio::awaitable<GroupVerdict> end(TurnEnd how, std::vector<std::function<void()>> after_commit = {});

      private:
        std::shared_ptr<Member> member_;
    };

    GroupCommit(pg::Pool& pool, GroupCommitSettings settings, GroupCommitMetrics metrics = {});
    GroupCommit(const GroupCommit&) = delete;
    GroupCommit& operator=(const GroupCommit&) = delete;
    ~GroupCommit();

    /// Waits for the job's turn in a group; none if its group failed before the turn came (the job then takes a
    /// transaction of its own). Throws operation_aborted if the calling coroutine is cancelled while it waits, or
    /// once the lanes have stopped. `job_id` and `type` go into the inbox claim.
    boost::asio::awaitable<std::optional<Turn>> join(std::string job_id, std::string type);

    /// Runs the lanes until cancelled; then every job waiting for a turn, and every later one, is refused.
    boost::asio::awaitable<void> serve();

  private:
    boost::asio::awaitable<void> run_lane();
    /// Runs the open group: its jobs' turns one after another, then its commit (once another lane may open the next
    /// group).
    boost::asio::awaitable<void> run_group();
    void close_group() noexcept;
    /// Whether another group may open now; under mutex_.
    [[nodiscard]] bool may_open(std::chrono::steady_clock::time_point now) const;
    /// A job was taken out of its group: only one group opens for a while.
    void narrow();
    void count(const std::vector<std::shared_ptr<Member>>& members, const std::string& failure) const;
    /// Runs the kept jobs' after-commit hooks, then tells each job how its group ended.
    boost::asio::awaitable<void> announce(const std::vector<std::shared_ptr<Member>>& members,
                                          const std::string& failure);
    /// The jobs waiting, `room` at most, taken out of the line.
    std::vector<std::shared_ptr<Member>> take_waiting(std::size_t room);
    /// The same, waiting up to the group wait for one if none is waiting.
    boost::asio::awaitable<std::vector<std::shared_ptr<Member>>> next_members(std::size_t room);
    /// Claims the jobs in the inbox in one statement; a job already there is not claimed (a duplicate).
    boost::asio::awaitable<void> claim(pg::Transaction& transaction,
                                       const std::vector<std::shared_ptr<Member>>& members);
    /// Gives the `taken` jobs their turns, passed from one to the next, and waits until they are over. If one was
    /// taken out for a lock conflict, which ends the group's turns, returns how many after it were given back.
    boost::asio::awaitable<std::optional<std::size_t>> run_turns(const std::shared_ptr<pg::Transaction>& transaction,
                                                                 const std::vector<std::shared_ptr<Member>>& taken);
    /// Puts the jobs back at the head of the line, their claims undone in `transaction`: the next group takes them.
    void give_back(pg::Transaction& transaction, std::vector<std::shared_ptr<Member>>::const_iterator first,
                   std::vector<std::shared_ptr<Member>>::const_iterator last);
    void close() noexcept;

    pg::Pool& pool_;
    GroupCommitSettings settings_;
    GroupCommitMetrics metrics_;
    std::string lock_wait_statement_;
    std::mutex mutex_;
    std::deque<std::shared_ptr<Member>> waiting_;
    bool closed_ = false;
    /// Groups running their jobs now (open), at most settings_.open_groups.
    std::size_t open_groups_ = 0;
    /// Until when only one group opens, and for how long it did last time.
    std::chrono::steady_clock::time_point narrowed_until_{};
    std::chrono::milliseconds narrowed_for_{};
    AsyncCondition arrived_;
    AsyncCondition opening_;
};

}  // namespace conveyor::worker
