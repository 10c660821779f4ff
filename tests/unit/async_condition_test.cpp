#include "conveyor/core/async_condition.hpp"

#include <gtest/gtest.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_future.hpp>
#include <future>
#include <vector>

namespace conveyor {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

/// Long enough that a waiter only misses it if its wake-up was lost.
constexpr auto kWakeBound = 10s;

asio::awaitable<void> wait_for_count(AsyncCondition& condition, const std::atomic<int>& count, int at_least) {
    co_await condition.wait([&count, at_least] { return count >= at_least; });
}

asio::awaitable<void> wait_for_flag(AsyncCondition& condition, const std::atomic<bool>& flag) {
    co_await condition.wait([&flag] { return flag.load(); });
}

TEST(AsyncCondition, AWaitForWhatHoldsAlreadyReturnsAtOnce) {
    asio::io_context io;
    AsyncCondition condition;
    const std::atomic<bool> flag{true};
    auto waited = asio::co_spawn(io, wait_for_flag(condition, flag), asio::use_future);
    io.run();
    EXPECT_EQ(waited.wait_for(0s), std::future_status::ready);
}

TEST(AsyncCondition, WaitersOnOtherThreadsWakeEachWhenItsStateArrivesAndNotBefore) {
    constexpr int kWaiters = 64;
    asio::thread_pool pool(2);
    AsyncCondition condition;
    std::atomic<int> count{0};
    std::vector<std::future<void>> waiters;
    for (int at_least = 1; at_least <= kWaiters; ++at_least) {
        waiters.push_back(
            asio::co_spawn(asio::make_strand(pool), wait_for_count(condition, count, at_least), asio::use_future));
    }
    for (int step = 1; step <= kWaiters; ++step) {
        // The waiter for this step has not returned before the count reaches it.
        EXPECT_EQ(waiters[static_cast<std::size_t>(step - 1)].wait_for(1ms), std::future_status::timeout);
        ++count;
        condition.notify_all();
        EXPECT_EQ(waiters[static_cast<std::size_t>(step - 1)].wait_for(kWakeBound), std::future_status::ready)
            << "waiter " << step << " was not woken";
    }
    pool.join();
}

/// The state changes and notify_all() runs on this thread while the waiter, on another, registers and looks: in
/// every interleaving the waiter wakes.
TEST(AsyncCondition, NoWakeUpIsLostWhenTheStateChangesWhileAWaiterLooks) {
    constexpr int kRounds = 2'000;
    asio::thread_pool pool(2);
    AsyncCondition condition;
    for (int round = 0; round < kRounds; ++round) {
        std::atomic<bool> flag{false};
        auto waited = asio::co_spawn(pool, wait_for_flag(condition, flag), asio::use_future);
        flag = true;
        condition.notify_all();
        ASSERT_EQ(waited.wait_for(kWakeBound), std::future_status::ready) << "lost wake-up in round " << round;
    }
    pool.join();
}

TEST(AsyncCondition, CancellingTheWaitingCoroutineEndsItsWaitWithOperationAborted) {
    asio::io_context io;
    AsyncCondition condition;
    std::atomic<bool> flag{false};
    asio::cancellation_signal cancel;
    std::exception_ptr ended;
    bool done = false;
    asio::co_spawn(io, wait_for_flag(condition, flag),
                   asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr error) {
                       ended = std::move(error);
                       done = true;
                   }));
    io.run_for(20ms);
    ASSERT_FALSE(done);
    cancel.emit(asio::cancellation_type::terminal);
    io.restart();
    io.run_for(1s);
    ASSERT_TRUE(done);
    ASSERT_TRUE(ended);
    try {
        std::rethrow_exception(ended);
    } catch (const boost::system::system_error& e) {
        EXPECT_EQ(e.code(), asio::error::operation_aborted);
    }
    // The cancelled waiter left: notifying finds no one, and the next waiter is served as usual.
    condition.notify_all();
    auto next = asio::co_spawn(io, wait_for_flag(condition, flag), asio::use_future);
    io.restart();
    io.run_for(20ms);
    ASSERT_EQ(next.wait_for(0s), std::future_status::timeout);
    flag = true;
    condition.notify_all();
    io.restart();
    io.run_for(1s);
    EXPECT_EQ(next.wait_for(0s), std::future_status::ready);
}

}  // namespace
}  // namespace conveyor
