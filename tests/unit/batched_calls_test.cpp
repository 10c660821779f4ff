#include "conveyor/core/batched_calls.hpp"

#include <gtest/gtest.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_future.hpp>
#include <future>
#include <stdexcept>
#include <vector>

namespace conveyor {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

asio::awaitable<int> doubled(BatchedCalls<int, int>& calls, int value) {
    co_return co_await calls.call(value);
}

/// Runs each batch as doubling its numbers, recording the batch sizes; the first batch waits for `first_may_end`.
struct DoublingServer {
    std::vector<std::size_t> sizes;
    bool first_may_end = false;

    asio::awaitable<std::vector<int>> run(std::vector<int>& batch) {
        sizes.push_back(batch.size());
        asio::steady_timer timer(co_await asio::this_coro::executor);
        while (sizes.size() == 1 && !first_may_end) {
            timer.expires_after(1ms);
            co_await timer.async_wait(asio::use_awaitable);
        }
        std::vector<int> replies;
        for (const int value : batch) {
            replies.push_back(value * 2);
        }
        co_return replies;
    }
};

TEST(BatchedCalls, CallsThatArriveWhileABatchRunsGoTogetherInTheNext) {
    asio::io_context io;
    BatchedCalls<int, int> calls(100);
    DoublingServer server;
    asio::cancellation_signal stop;
    asio::co_spawn(io, calls.serve([&server](std::vector<int>& batch) { return server.run(batch); }),
                   asio::bind_cancellation_slot(stop.slot(), asio::detached));
    auto first = asio::co_spawn(io, doubled(calls, 1), asio::use_future);
    io.run_for(20ms);
    ASSERT_EQ(server.sizes, std::vector<std::size_t>{1});
    std::vector<std::future<int>> later;
    for (int value = 2; value <= 11; ++value) {
        later.push_back(asio::co_spawn(io, doubled(calls, value), asio::use_future));
    }
    io.run_for(20ms);
    server.first_may_end = true;
    io.run_for(50ms);
    EXPECT_EQ(server.sizes, (std::vector<std::size_t>{1, 10}));
    EXPECT_EQ(first.get(), 2);
    for (int value = 2; value <= 11; ++value) {
        EXPECT_EQ(later[static_cast<std::size_t>(value - 2)].get(), value * 2);
    }
    stop.emit(asio::cancellation_type::terminal);
    io.run_for(20ms);
}

TEST(BatchedCalls, EveryCallerOfAFailedBatchGetsItsFailure) {
    asio::io_context io;
    BatchedCalls<int, int> calls(100);
    asio::cancellation_signal stop;
    auto failing = [](std::vector<int>&) -> asio::awaitable<std::vector<int>> {
        throw std::runtime_error("database away");
        co_return std::vector<int>{};
    };
    std::vector<std::future<int>> results;
    for (int value = 0; value < 3; ++value) {
        results.push_back(asio::co_spawn(io, doubled(calls, value), asio::use_future));
    }
    asio::co_spawn(io, calls.serve(failing), asio::bind_cancellation_slot(stop.slot(), asio::detached));
    io.run_for(50ms);
    for (auto& result : results) {
        EXPECT_THROW(result.get(), std::runtime_error);
    }
    stop.emit(asio::cancellation_type::terminal);
    io.run_for(20ms);
}

TEST(BatchedCalls, CallersWaitingWhenServingStopsAreToldSo) {
    asio::io_context io;
    BatchedCalls<int, int> calls(100);
    DoublingServer server;  // its first batch never ends
    asio::cancellation_signal stop;
    asio::co_spawn(io, calls.serve([&server](std::vector<int>& batch) { return server.run(batch); }),
                   asio::bind_cancellation_slot(stop.slot(), asio::detached));
    auto in_batch = asio::co_spawn(io, doubled(calls, 1), asio::use_future);
    io.run_for(20ms);
    auto waiting = asio::co_spawn(io, doubled(calls, 2), asio::use_future);
    io.run_for(20ms);
    stop.emit(asio::cancellation_type::terminal);
    io.run_for(50ms);
    ASSERT_EQ(in_batch.wait_for(0s), std::future_status::ready);
    ASSERT_EQ(waiting.wait_for(0s), std::future_status::ready);
    EXPECT_THROW(in_batch.get(), boost::system::system_error);
    EXPECT_THROW(waiting.get(), boost::system::system_error);
    io.restart();  // it ran out of work once serving stopped
    auto after = asio::co_spawn(io, doubled(calls, 3), asio::use_future);
    io.run_for(20ms);
    EXPECT_THROW(after.get(), boost::system::system_error);
}

}  // namespace
}  // namespace conveyor
