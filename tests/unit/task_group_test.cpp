#include "conveyor/core/task_group.hpp"

#include <gtest/gtest.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

namespace conveyor {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

/// Far enough that a test only ends before it if the task group wakes its waiter.
constexpr auto kNever = std::chrono::hours(1);

asio::awaitable<void> sleep_for(Clock::duration duration) {
    asio::steady_timer timer(co_await asio::this_coro::executor, duration);
    co_await timer.async_wait(asio::use_awaitable);
}

/// Runs join(deadline) on `executor` and returns its answer; ctest's timeout is the bound if it never answers.
bool join_on(asio::any_io_executor executor, TaskGroup& group, Clock::time_point deadline) {
    return asio::co_spawn(executor, group.join(deadline), asio::use_future).get();
}

// Tasks are coroutine functions, not capturing coroutine lambdas: a lambda's captures die with it when spawn
// returns, while a coroutine's parameters live in its frame.

asio::awaitable<void> count_after(Clock::duration delay, std::atomic<int>& finished) {
    co_await sleep_for(delay);
    ++finished;
}

asio::awaitable<void> loop_until_cancelled(std::atomic<int>& wound_down) {
    bool waiting = true;
    while (waiting) {
        waiting = co_await wait_until(Clock::now() + kNever);
    }
    ++wound_down;
}

asio::awaitable<void> cancel_while_busy(TaskGroup& group, TaskGroup::Task& task, bool throw_if_cancelled,
                                        std::optional<bool>& waited) {
    co_await asio::this_coro::throw_if_cancelled(throw_if_cancelled);
    group.cancel();
    // The emit is queued on this strand behind us; once this post runs, the cancellation is on record.
    co_await asio::post(task.strand(), asio::use_awaitable);
    waited = co_await wait_until(Clock::now() + kNever);
}

asio::awaitable<void> fail_after(Clock::duration delay) {
    co_await sleep_for(delay);
    throw std::runtime_error("handler bug");
}

asio::awaitable<void> note_interruption(bool& interrupted) {
    interrupted = !(co_await wait_until(Clock::now() + kNever));
}

asio::awaitable<void> cancel_after(Clock::duration delay, TaskGroup::Task& task) {
    co_await sleep_for(delay);
    task.signal().emit(asio::cancellation_type::terminal);
}

TEST(TaskGroup, JoinReturnsWhenTheLastTaskEndsLongBeforeItsDeadline) {
    asio::thread_pool pool(2);
    TaskGroup group(pool.get_executor());
    std::atomic<int> finished{0};
    for (int i = 1; i <= 3; ++i) {
        group.spawn("short task", [&finished, i](TaskGroup::Task&) { return count_after(i * 10ms, finished); });
    }
    EXPECT_TRUE(join_on(pool.get_executor(), group, Clock::now() + kNever));
    EXPECT_EQ(finished, 3);
    EXPECT_EQ(group.running(), 0U);
    pool.join();
}

TEST(TaskGroup, CancelEndsEveryTaskThroughWhatItAwaits) {
    asio::thread_pool pool(2);
    TaskGroup group(pool.get_executor());
    std::atomic<int> wound_down{0};
    for (int i = 0; i < 8; ++i) {
        group.spawn("looping task", [&wound_down](TaskGroup::Task&) { return loop_until_cancelled(wound_down); });
    }
    EXPECT_FALSE(join_on(pool.get_executor(), group, Clock::now() + 50ms));
    EXPECT_EQ(group.running(), 8U);
    group.cancel();
    EXPECT_TRUE(join_on(pool.get_executor(), group, Clock::now() + kNever));
    EXPECT_EQ(wound_down, 8);
    pool.join();
}

TEST(TaskGroup, ACancellationThatCameWhileATaskWasBusyStopsItsNextWait) {
    asio::io_context io;
    TaskGroup group(io.get_executor());
    std::optional<bool> waited;
    std::optional<bool> waited_quietly;
    group.spawn("busy task", [&](TaskGroup::Task& task) { return cancel_while_busy(group, task, true, waited); });
    group.spawn("quiet busy task",
                [&](TaskGroup::Task& task) { return cancel_while_busy(group, task, false, waited_quietly); });
    io.run();
    EXPECT_EQ(waited, std::nullopt) << "by default, awaiting anything once cancelled throws operation_aborted";
    EXPECT_EQ(waited_quietly, false);
    EXPECT_EQ(group.running(), 0U);
}

TEST(TaskGroup, AFailingTaskEndsAndTheOthersRunOn) {
    asio::io_context io;
    TaskGroup group(io.get_executor());
    std::atomic<int> finished{0};
    group.spawn("failing task", [](TaskGroup::Task&) { return fail_after(1ms); });
    group.spawn("other task", [&finished](TaskGroup::Task&) { return count_after(20ms, finished); });
    std::optional<bool> joined;
    asio::co_spawn(io, group.join(Clock::now() + kNever),
                   [&joined](const std::exception_ptr&, bool all) { joined = all; });
    io.run();
    EXPECT_EQ(joined, true);
    EXPECT_EQ(finished, 1);
}

TEST(TaskGroup, ACompanionOnTheSameStrandCancelsItsTask) {
    asio::io_context io;
    TaskGroup group(io.get_executor());
    bool interrupted = false;
    auto& task = group.spawn("long job", [&interrupted](TaskGroup::Task&) { return note_interruption(interrupted); });
    group.spawn_on(task.strand(), "watchdog", [&task](TaskGroup::Task&) { return cancel_after(5ms, task); });
    io.run();
    EXPECT_TRUE(interrupted);
    EXPECT_EQ(group.running(), 0U);
}

/// Runs `loops` side by side on `io` until they end, cancelled after `cancel_after` if given; returns what they
/// threw.
std::exception_ptr run_loops(asio::io_context& io, std::vector<asio::awaitable<void>> loops,
                             std::optional<Clock::duration> cancel_after = std::nullopt) {
    asio::cancellation_signal signal;
    std::exception_ptr thrown;
    asio::co_spawn(io, run_side_by_side(std::move(loops)),
                   asio::bind_cancellation_slot(signal.slot(), [&thrown](const std::exception_ptr& e) { thrown = e; }));
    asio::steady_timer timer(io, cancel_after.value_or(kNever));
    if (cancel_after) {
        timer.async_wait([&signal](boost::system::error_code) { signal.emit(asio::cancellation_type::terminal); });
    }
    io.run();
    return thrown;
}

std::string what_was_thrown(const std::exception_ptr& thrown) {
    try {
        std::rethrow_exception(thrown);
    } catch (const std::exception& e) {
        return e.what();
    }
}

TEST(RunSideBySide, AFailingLoopIsReportedNotHiddenBehindItsSiblingsCancellation) {
    asio::io_context io;
    std::vector<asio::awaitable<void>> loops;
    // The failing loop is not the first: `&&` would report the first loop's operation_aborted.
    loops.push_back(sleep_for(kNever));
    loops.push_back(fail_after(1ms));
    loops.push_back(sleep_for(kNever));
    const auto thrown = run_loops(io, std::move(loops));
    ASSERT_TRUE(thrown);
    EXPECT_EQ(what_was_thrown(thrown), "handler bug");
}

TEST(RunSideBySide, ACancellationReachesEveryLoopAndEndsAsOperationAborted) {
    asio::io_context io;
    std::atomic<int> wound_down{0};
    std::vector<asio::awaitable<void>> loops;
    loops.reserve(4);
    for (int i = 0; i < 3; ++i) {
        loops.push_back(sleep_for(kNever));
    }
    loops.push_back(loop_until_cancelled(wound_down));
    const auto thrown = run_loops(io, std::move(loops), 5ms);
    ASSERT_TRUE(thrown);
    try {
        std::rethrow_exception(thrown);
    } catch (const boost::system::system_error& e) {
        EXPECT_EQ(e.code(), asio::error::operation_aborted);
    }
    EXPECT_EQ(wound_down, 1);
}

}  // namespace
}  // namespace conveyor
