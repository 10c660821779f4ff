#include "group_commit.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>
#include <set>
#include <vector>

#include "conveyor/core/task_group.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using boost::system::error_code;

namespace {

/// Claims a batch of jobs in the inbox; returns the ids that were not there yet.
constexpr std::string_view kClaim =
    "INSERT INTO conveyor.inbox (message_id, type) SELECT * FROM unnest($1::text[], $2::text[]) "
    "ON CONFLICT DO NOTHING RETURNING message_id";

[[noreturn]] void throw_aborted() {
    throw boost::system::system_error(asio::error::operation_aborted);
}

}  // namespace

/// A job in a group, shared by its coroutine, the lane and the relay of its batch: the state says how far it is,
/// and a one-slot channel wakes the job to look at it (wake-ups merge; nothing travels in them).
struct GroupCommit::Member {
    using Wake = asio::experimental::concurrent_channel<void(error_code)>;
    enum class State {
        waiting,    ///< in line for a turn
        abandoned,  ///< its coroutine gave up while in line: the lanes skip it
        taken,      ///< in a batch, its turn not come yet
        granted,    ///< its turn: the job runs its statements
        ended,      ///< it ended its turn (or gave up before it began); its savepoint is released or rolled back
        decided,    ///< its group ended, or could not take it: `verdict` holds
        refused,    ///< the lanes stopped before it had a turn
    };

    Member(const asio::any_io_executor& executor, std::string job, std::string job_type)
        : job_id(std::move(job)), type(std::move(job_type)), to_job(executor, 1) {}

    [[nodiscard]] State current() {
        const std::lock_guard lock(mutex);
        return state;
    }

    /// Gives the job its turn, unless it gave up meanwhile or its group ended.
    State grant(const std::shared_ptr<pg::Transaction>& group_transaction, const std::shared_ptr<Relay>& batch) {
        {
            const std::lock_guard lock(mutex);
            if (state != State::taken) {
                return state;
            }
            state = State::granted;
            transaction = group_transaction;
            relay = batch;
        }
        to_job.try_send(error_code{});
        return State::granted;
    }

    /// Tells the job how its group ended.
    void decide(GroupVerdict outcome) {
        {
            const std::lock_guard lock(mutex);
            if (state == State::decided || state == State::refused || state == State::abandoned) {
                return;
            }
            if (state != State::granted) {
                transaction.reset();  // a job holding its turn keeps its share until it ends the turn
                relay.reset();
            }
            verdict = outcome;
            state = State::decided;
        }
        to_job.try_send(error_code{});
    }

    /// The job ends its turn, or gives up its place: in line it is skipped, taken it is undone when its turn comes,
    /// granted it is undone unless it says otherwise, and it passes the turn on.
    void end(TurnEnd way, std::vector<std::function<void()>> hooks = {});

    const std::string job_id;
    const std::string type;
    std::mutex mutex;
    State state = State::waiting;
    /// The group's transaction, shared while the job holds its turn: a lane that stops midway (at shutdown) must
    /// not end it under the job's feet.
    std::shared_ptr<pg::Transaction> transaction;
    /// Its batch, while it holds its turn.
    std::shared_ptr<Relay> relay;
    bool claimed = false;
    TurnEnd how = TurnEnd::undo;
    std::vector<std::function<void()>> after_commit;
    GroupVerdict verdict = GroupVerdict::run_alone;
    Wake to_job;
};

/// The turns of a batch, passed from job to job: a job that ends its turn settles its savepoint and gives the next
/// job its turn itself, so each job costs one wake-up rather than two through the lane. The lane wakes once the
/// batch is over: every job had its turn, or one was taken out.
struct GroupCommit::Relay {
    Relay(const asio::any_io_executor& executor, std::shared_ptr<pg::Transaction> group_transaction,
          std::vector<std::shared_ptr<Member>> jobs, const std::string& lock_wait)
        : transaction(std::move(group_transaction)),
          batch(std::move(jobs)),
          lock_wait_statement(lock_wait),
          to_lane(executor, 1) {}

    /// Gives the next job its turn; wakes the lane if none is left, one was taken out, or the group ended.
    void pass_turn(const std::shared_ptr<Relay>& self) {
        while (true) {
            std::shared_ptr<Member> next;
            {
                const std::lock_guard lock(mutex);
                if (!taken_out && turns < batch.size()) {
                    next = batch[turns++];
                } else {
                    over = true;
                }
            }
            if (!next) {
                break;
            }
            if (next->claimed) {
                transaction->defer(lock_wait_statement);
                transaction->defer("SAVEPOINT job");
            }
            const auto granted = next->grant(transaction, self);
            if (granted == Member::State::granted) {
                return;  // it passes the turn on when it ends
            }
            if (granted != Member::State::ended) {
                const std::lock_guard lock(mutex);
                over = true;  // the group ended without this batch (the lanes stopped)
                break;
            }
            settle(*next);  // it gave up before its turn
        }
        to_lane.try_send(error_code{});
    }

    /// Releases the savepoint of a job that ended its turn, or rolls it back with the job's claim.
    void settle(Member& member) {
        if (member.how == TurnEnd::keep && transaction->failed()) {
            // It caught the failure of one of its statements and returned success anyway: the transaction is
            // aborted until its savepoint is rolled back. Alone, its commit fails as it would have without a group.
            member.how = TurnEnd::run_alone;
        }
        if (member.how == TurnEnd::run_alone) {
            const std::lock_guard lock(mutex);
            taken_out = true;
        }
        if (!member.claimed) {
            return;
        }
        if (member.how == TurnEnd::keep) {
            transaction->defer("RELEASE SAVEPOINT job");
        } else {
            transaction->defer("ROLLBACK TO SAVEPOINT job");
            transaction->defer("RELEASE SAVEPOINT job");
            // Its claim was made for the whole batch, outside its savepoint.
            transaction->defer("DELETE FROM conveyor.inbox WHERE message_id = $1", {member.job_id});
        }
    }

    [[nodiscard]] bool is_over() {
        const std::lock_guard lock(mutex);
        return over;
    }

    const std::shared_ptr<pg::Transaction> transaction;
    const std::vector<std::shared_ptr<Member>> batch;
    const std::string& lock_wait_statement;
    std::mutex mutex;
    /// Jobs whose turn came (or who gave up before it did), in batch order.
    std::size_t turns = 0;
    bool taken_out = false;
    bool over = false;
    Member::Wake to_lane;
};

void GroupCommit::Member::end(TurnEnd way, std::vector<std::function<void()>> hooks) {
    std::shared_ptr<Relay> batch;
    {
        const std::lock_guard lock(mutex);
        transaction.reset();
        if (state == State::waiting) {
            state = State::abandoned;
            return;
        }
        if (state != State::taken && state != State::granted) {
            return;
        }
        how = way;
        after_commit = std::move(hooks);
        batch = std::exchange(relay, nullptr);
        state = State::ended;
    }
    if (batch) {
        batch->settle(*this);
        batch->pass_turn(batch);
    }
}

GroupCommit::Turn::~Turn() {
    if (member_) {
        member_->end(TurnEnd::undo);
    }
}

bool GroupCommit::Turn::claimed() const noexcept {
    return member_->claimed;
}

pg::Transaction& GroupCommit::Turn::transaction() const noexcept {
    return *member_->transaction;
}

asio::awaitable<GroupVerdict> GroupCommit::Turn::end(TurnEnd how, std::vector<std::function<void()>> after_commit) {
    const auto member = std::move(member_);
    member->end(how, std::move(after_commit));
    if (how == TurnEnd::undo) {
        co_return GroupVerdict::undone;
    }
    // The commit decides what became of the job's effects, so a cancellation (its deadline, the shutdown) does not
    // end this wait: the group ends within a commit.
    while (true) {
        {
            const std::lock_guard lock(member->mutex);
            if (member->state == Member::State::decided) {
                co_return member->verdict;
            }
        }
        const auto state = co_await asio::this_coro::cancellation_state;
        if (cancelled(state)) {
            co_await asio::this_coro::reset_cancellation_state();
        }
        co_await member->to_job.async_receive(asio::as_tuple(asio::use_awaitable));
    }
}

GroupCommit::GroupCommit(pg::Pool& pool, GroupCommitSettings settings, GroupCommitMetrics metrics)
    : pool_(pool),
      settings_(settings),
      metrics_(metrics),
      lock_wait_statement_(fmt::format("SET LOCAL lock_timeout = {}", settings_.lock_wait.count())) {}

GroupCommit::~GroupCommit() {
    close();
}

asio::awaitable<std::optional<GroupCommit::Turn>> GroupCommit::join(std::string job_id, std::string type) {
    const auto state = co_await asio::this_coro::cancellation_state;
    if (cancelled(state)) {
        throw_aborted();
    }
    auto member = std::make_shared<Member>(co_await asio::this_coro::executor, std::move(job_id), std::move(type));
    {
        const std::lock_guard lock(mutex_);
        if (closed_) {
            throw_aborted();
        }
        waiting_.push_back(member);
    }
    // From here on the turn leaves the line, or ends, whichever way join() does.
    Turn turn(member);
    arrived_.notify_all();
    while (true) {
        auto [error] = co_await member->to_job.async_receive(asio::as_tuple(asio::use_awaitable));
        const auto now = member->current();
        if (now == Member::State::granted) {
            co_return std::optional<Turn>(std::move(turn));
        }
        if (now == Member::State::decided) {
            co_return std::nullopt;  // its group failed before its turn: it runs alone
        }
        if (now == Member::State::refused || error) {
            throw_aborted();
        }
    }
}

asio::awaitable<void> GroupCommit::serve() {
    std::vector<asio::awaitable<void>> lanes;
    for (std::size_t lane = 0; lane < settings_.lanes; ++lane) {
        lanes.push_back(run_lane());
    }
    try {
        co_await run_side_by_side(std::move(lanes));
    } catch (...) {
        close();
        throw;
    }
    close();
}

asio::awaitable<void> GroupCommit::run_lane() {
    auto has_waiting = [this] {
        const std::lock_guard lock(mutex_);
        return !waiting_.empty();
    };
    auto open_is_free = [this] {
        const std::lock_guard lock(mutex_);
        return may_open(std::chrono::steady_clock::now());
    };
    while (true) {
        co_await arrived_.wait(has_waiting);
        co_await opening_.wait(open_is_free);
        {
            const std::lock_guard lock(mutex_);
            if (!may_open(std::chrono::steady_clock::now())) {
                continue;  // another lane opened its group first
            }
            ++open_groups_;
        }
        co_await run_group();
    }
}

bool GroupCommit::may_open(std::chrono::steady_clock::time_point now) const {
    const auto limit = now < narrowed_until_ ? 1 : settings_.open_groups;
    return open_groups_ < limit;
}

void GroupCommit::narrow() {
    if (settings_.open_groups < 2) {
        return;
    }
    const auto now = std::chrono::steady_clock::now();
    const std::lock_guard lock(mutex_);
    if (now < narrowed_until_) {
        return;  // one group at a time already: the conflict was with a job outside this worker's groups
    }
    // A conflict soon after more groups opened again: the jobs still touch the same rows, so stay narrow longer.
    const bool again = narrowed_for_.count() > 0 && now < narrowed_until_ + narrowed_for_;
    narrowed_for_ = again ? std::min(narrowed_for_ * 2, settings_.longest_narrowed) : settings_.narrowed;
    narrowed_until_ = now + narrowed_for_;
}

void GroupCommit::close_group() noexcept {
    {
        const std::lock_guard lock(mutex_);
        --open_groups_;
    }
    opening_.notify_all();
}

asio::awaitable<void> GroupCommit::run_group() {
    // The open group is this lane's until it starts to commit, however it ends.
    struct Closing {
        GroupCommit& groups;
        bool open = true;
        void close() noexcept {
            if (std::exchange(open, false)) {
                groups.close_group();
            }
        }
        ~Closing() { close(); }
    } closing{*this};
    auto taken = take_waiting(settings_.max_members);
    if (taken.empty()) {
        co_return;
    }
    std::vector<std::shared_ptr<Member>> members;
    std::string failure;
    try {
        auto transaction = std::make_shared<pg::Transaction>(co_await pool_.begin());
        while (!taken.empty()) {
            members.insert(members.end(), taken.begin(), taken.end());
            co_await claim(*transaction, taken);
            const auto given_back = co_await run_turns(transaction, taken);
            if (given_back) {
                members.resize(members.size() - *given_back);
                break;
            }
            taken = co_await next_members(settings_.max_members - members.size());
        }
        closing.close();
        co_await transaction->commit();
    } catch (const std::exception& e) {
        failure = e.what();
    }
    closing.close();
    co_await announce(members, failure);
}

void GroupCommit::count(const std::vector<std::shared_ptr<Member>>& members, const std::string& failure) const {
    if (!failure.empty()) {
        if (metrics_.failed != nullptr) {
            metrics_.failed->Increment();
        }
        return;
    }
    if (metrics_.jobs != nullptr) {
        metrics_.jobs->Observe(static_cast<double>(members.size()));
    }
    const auto taken_out =
        std::count_if(members.begin(), members.end(), [](const auto& each) { return each->how == TurnEnd::run_alone; });
    if (metrics_.taken_out != nullptr && taken_out > 0) {
        metrics_.taken_out->Increment(static_cast<double>(taken_out));
    }
}

asio::awaitable<void> GroupCommit::claim(pg::Transaction& transaction,
                                         const std::vector<std::shared_ptr<Member>>& members) {
    std::vector<std::string_view> ids;
    std::vector<std::string_view> types;
    for (const auto& member : members) {
        ids.push_back(member->job_id);
        types.push_back(member->type);
    }
    // The group's lock wait, set again before each batch and each job: a job may have changed it for the rest of
    // the transaction.
    transaction.defer(lock_wait_statement_);
    const auto claimed = co_await transaction.query(kClaim, pg::text_array(ids), pg::text_array(types));
    std::set<std::string, std::less<>> new_ids;
    for (int row = 0; row < claimed.rows(); ++row) {
        new_ids.emplace(claimed.text(row, 0));
    }
    for (const auto& member : members) {
        // A job id in line twice (a redelivered copy) is claimed by its first copy only.
        const std::lock_guard lock(member->mutex);
        member->claimed = new_ids.erase(member->job_id) > 0;
    }
}

asio::awaitable<void> GroupCommit::announce(const std::vector<std::shared_ptr<Member>>& members,
                                            const std::string& failure) {
    if (failure.empty()) {
        for (const auto& each : members) {
            if (each->how == TurnEnd::keep) {
                for (auto& hook : std::exchange(each->after_commit, {})) {
                    hook();
                }
            }
        }
    }
    count(members, failure);
    for (const auto& each : members) {
        if (!failure.empty()) {
            each->decide(GroupVerdict::run_alone);
        } else if (each->how == TurnEnd::keep) {
            each->decide(GroupVerdict::committed);
        } else {
            each->decide(each->how == TurnEnd::run_alone ? GroupVerdict::run_alone : GroupVerdict::undone);
        }
    }
    const auto state = co_await asio::this_coro::cancellation_state;
    if (!failure.empty() && !cancelled(state)) {
        spdlog::warn("group commit: a group of {} jobs failed ({}); each runs again in a transaction of its own",
                     members.size(), failure);
    }
}

asio::awaitable<std::optional<std::size_t>> GroupCommit::run_turns(const std::shared_ptr<pg::Transaction>& transaction,
                                                                   const std::vector<std::shared_ptr<Member>>& taken) {
    auto relay = std::make_shared<Relay>(co_await asio::this_coro::executor, transaction, taken, lock_wait_statement_);
    relay->pass_turn(relay);
    while (!relay->is_over()) {
        auto [error] = co_await relay->to_lane.async_receive(asio::as_tuple(asio::use_awaitable));
        if (error) {
            throw boost::system::system_error(error);  // the lanes are stopping
        }
    }
    if (!relay->taken_out) {
        co_return std::nullopt;
    }
    // A job waited too long for a lock, maybe held by another open group that waits for one of this group's: the
    // group commits now, and the jobs whose turn has not come wait for the next one.
    narrow();
    const auto rest = taken.begin() + static_cast<std::ptrdiff_t>(relay->turns);
    give_back(*transaction, rest, taken.end());
    const auto given_back = static_cast<std::size_t>(taken.end() - rest);
    co_return given_back;
}

void GroupCommit::give_back(pg::Transaction& transaction, std::vector<std::shared_ptr<Member>>::const_iterator first,
                            std::vector<std::shared_ptr<Member>>::const_iterator last) {
    std::vector<std::string_view> claimed;
    const std::lock_guard lock(mutex_);
    for (auto member = std::make_reverse_iterator(last); member != std::make_reverse_iterator(first); ++member) {
        const std::lock_guard member_lock((*member)->mutex);
        if ((*member)->claimed) {
            claimed.push_back((*member)->job_id);
        }
        if ((*member)->state == Member::State::taken) {
            (*member)->state = Member::State::waiting;
            waiting_.push_front(*member);
        }
    }
    if (!claimed.empty()) {
        transaction.defer("DELETE FROM conveyor.inbox WHERE message_id = ANY($1::text[])", {pg::text_array(claimed)});
    }
}

std::vector<std::shared_ptr<GroupCommit::Member>> GroupCommit::take_waiting(std::size_t room) {
    std::vector<std::shared_ptr<Member>> taken;
    const std::lock_guard lock(mutex_);
    while (!waiting_.empty() && taken.size() < room) {
        auto member = std::move(waiting_.front());
        waiting_.pop_front();
        const std::lock_guard member_lock(member->mutex);
        if (member->state == Member::State::waiting) {
            member->state = Member::State::taken;
            taken.push_back(std::move(member));
        }
    }
    return taken;
}

asio::awaitable<std::vector<std::shared_ptr<GroupCommit::Member>>> GroupCommit::next_members(std::size_t room) {
    auto taken = take_waiting(room);
    if (!taken.empty() || room == 0 || settings_.wait.count() == 0) {
        co_return taken;
    }
    auto has_waiting = [this] {
        const std::lock_guard lock(mutex_);
        return !waiting_.empty();
    };
    asio::steady_timer timer(co_await asio::this_coro::executor, settings_.wait);
    co_await (arrived_.wait(has_waiting) || timer.async_wait(asio::as_tuple(asio::use_awaitable)));
    co_return take_waiting(room);
}

void GroupCommit::close() noexcept {
    std::deque<std::shared_ptr<Member>> refused;
    {
        const std::lock_guard lock(mutex_);
        closed_ = true;
        refused.swap(waiting_);
    }
    for (const auto& member : refused) {
        {
            const std::lock_guard lock(member->mutex);
            if (member->state != Member::State::waiting) {
                continue;
            }
            member->state = Member::State::refused;
        }
        member->to_job.try_send(error_code{});
    }
}

}  // namespace conveyor::worker
