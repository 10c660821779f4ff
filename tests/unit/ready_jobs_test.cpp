#include "ready_jobs.hpp"

#include <gtest/gtest.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/channel_error.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <map>
#include <memory>
#include <string>

namespace conveyor::worker {
namespace {

namespace asio = boost::asio;
using topology::Band;

amqp::Delivery delivery_in(const std::string& queue, std::string id) {
    amqp::Delivery delivery;
    delivery.queue = queue;
    delivery.message.properties.message_id = std::move(id);
    return delivery;
}

amqp::DeliveryBatch batch_of(std::initializer_list<std::pair<const char*, const char*>> queue_and_id) {
    amqp::DeliveryBatch batch;
    for (const auto& [queue, id] : queue_and_id) {
        batch.push_back(delivery_in(queue, id));
    }
    return batch;
}

/// What one take() ended with: the job's id, or the error.
struct Taken {
    bool done = false;
    boost::system::error_code error;
    std::string id;
};

asio::awaitable<void> take_once(ReadyJobs& ready, ReadyJobs::Taker& taker, Taken& taken) {
    auto [error, delivery] = co_await ready.take(taker);
    taken = {true, error, delivery.message.properties.message_id};
}

/// A coroutine that takes one delivery, on its own io_context-bound taker.
struct Waiting {
    Waiting(asio::io_context& io, ReadyJobs& ready, ReadyJobs::Takes takes) : taker(io.get_executor(), takes) {
        asio::co_spawn(io, take_once(ready, taker, taken), asio::bind_cancellation_slot(cancel.slot(), asio::detached));
    }
    ReadyJobs::Taker taker;
    Taken taken;
    asio::cancellation_signal cancel;
};

std::vector<std::unique_ptr<Waiting>> start_waiting(asio::io_context& io, ReadyJobs& ready, int count,
                                                    ReadyJobs::Takes takes = ReadyJobs::Takes::any_band) {
    std::vector<std::unique_ptr<Waiting>> waiting;
    waiting.reserve(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) {
        waiting.push_back(std::make_unique<Waiting>(io, ready, takes));
    }
    io.poll();
    io.restart();
    return waiting;
}

int finished(const std::vector<std::unique_ptr<Waiting>>& waiting) {
    return static_cast<int>(std::count_if(waiting.begin(), waiting.end(), [](const auto& w) { return w->taken.done; }));
}

TEST(BandPreference, EachBacklogedBandGetsItsWeightsShareSpreadEvenly) {
    BandPreference preference({6, 3, 1});
    std::map<Band, int> starts;
    std::vector<Band> order;
    for (int pick = 0; pick < 1000; ++pick) {
        order.push_back(preference.pick({true, true, true}));
        ++starts[order.back()];
    }
    EXPECT_EQ(starts[Band::high], 600);
    EXPECT_EQ(starts[Band::normal], 300);
    EXPECT_EQ(starts[Band::low], 100);
    // Every ten starts hold exactly one low job: it never waits for the others' backlog to end.
    for (std::size_t window = 0; window + 10 <= order.size(); window += 10) {
        EXPECT_EQ(std::count(order.begin() + static_cast<std::ptrdiff_t>(window),
                             order.begin() + static_cast<std::ptrdiff_t>(window + 10), Band::low),
                  1)
            << "starts " << window << " to " << window + 9;
    }
}

TEST(BandPreference, ABandWithNothingWaitingGetsNoCreditForLater) {
    BandPreference preference({6, 3, 1});
    for (int pick = 0; pick < 100; ++pick) {
        EXPECT_EQ(preference.pick({false, true, false}), Band::normal);
    }
    // Under a full high load low keeps its share, 1 in 7, and normal did not bank 100 picks' worth of credit.
    std::map<Band, int> starts;
    for (int pick = 0; pick < 700; ++pick) {
        ++starts[preference.pick({true, false, true})];
    }
    EXPECT_EQ(starts[Band::high], 600);
    EXPECT_EQ(starts[Band::low], 100);
    std::map<Band, int> after;
    for (int pick = 0; pick < 9; ++pick) {
        ++after[preference.pick({true, true, false})];
    }
    EXPECT_EQ(after[Band::high], 6);
    EXPECT_EQ(after[Band::normal], 3);
}

TEST(BandPreference, WeightsParseOrSayWhatIsWrong) {
    EXPECT_EQ(parse_band_weights("6:3:1"), (BandPreference::Weights{6, 3, 1}));
    EXPECT_EQ(parse_band_weights("1:1:1"), (BandPreference::Weights{1, 1, 1}));
    for (const auto* bad :
         {"", "6:3", "6:3:1:1", "0:1:1", "6:3:0", "a:b:c", "6:3:-1", "6::1", "6:3:1:", "6:3:2000000"}) {
        try {
            (void)parse_band_weights(bad);
            ADD_FAILURE() << "accepted '" << bad << "'";
        } catch (const std::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find("high:normal:low"), std::string::npos) << e.what();
        }
    }
}

TEST(ReadyJobs, AFreeCoroutineStartsTheHighJobBeforeTheNormalOnesBeforeIt) {
    asio::io_context io;
    ReadyJobs ready(BandPreference({6, 3, 1}));
    ready.push(batch_of({{"conveyor.diag", "n1"}, {"conveyor.diag", "n2"}, {"conveyor.diag.low", "l1"}}));
    ready.push(batch_of({{"conveyor.diag.high", "h1"}}));
    EXPECT_EQ(ready.waiting(Band::high), 1U);
    EXPECT_EQ(ready.waiting(Band::normal), 2U);
    std::vector<std::string> order;
    for (int i = 0; i < 4; ++i) {
        auto waiting = start_waiting(io, ready, 1);
        ASSERT_TRUE(waiting[0]->taken.done);
        order.push_back(waiting[0]->taken.id);
    }
    EXPECT_EQ(order, (std::vector<std::string>{"h1", "n1", "n2", "l1"}));
}

TEST(ReadyJobs, EachDeliveryWakesOneWaitingCoroutineNotAll) {
    asio::io_context io;
    ReadyJobs ready(BandPreference({6, 3, 1}));
    auto waiting = start_waiting(io, ready, 50);
    EXPECT_EQ(finished(waiting), 0);
    ready.push(batch_of({{"conveyor.diag", "n1"}}));
    io.poll();
    io.restart();
    EXPECT_EQ(finished(waiting), 1);
    ready.push(batch_of({{"conveyor.diag", "n2"}, {"conveyor.diag.low", "l1"}, {"conveyor.diag.high", "h1"}}));
    io.poll();
    io.restart();
    EXPECT_EQ(finished(waiting), 4);
    EXPECT_TRUE(ready.close().empty());
    io.poll();
    EXPECT_EQ(finished(waiting), 50);
    for (const auto& w : waiting) {
        EXPECT_TRUE(!w->taken.error || w->taken.error == asio::experimental::error::channel_closed);
    }
}

TEST(ReadyJobs, CoroutinesReservedForTheHighBandLeaveTheOthersAlone) {
    asio::io_context io;
    ReadyJobs ready(BandPreference({6, 3, 1}));
    auto reserved = start_waiting(io, ready, 2, ReadyJobs::Takes::high_band_only);
    ready.push(batch_of({{"conveyor.orders", "n1"}, {"conveyor.orders.low", "l1"}}));
    io.poll();
    io.restart();
    EXPECT_EQ(finished(reserved), 0);
    ready.push(batch_of({{"conveyor.orders.high", "h1"}}));
    io.poll();
    io.restart();
    ASSERT_EQ(finished(reserved), 1);
    EXPECT_EQ(reserved[0]->taken.id, "h1");
    auto any = start_waiting(io, ready, 2);
    EXPECT_EQ(any[0]->taken.id, "n1");
    EXPECT_EQ(any[1]->taken.id, "l1");
    const auto left = ready.close();
    io.poll();
    EXPECT_TRUE(left.empty());
    EXPECT_EQ(reserved[1]->taken.error, asio::experimental::error::channel_closed);
}

TEST(ReadyJobs, AHighJobWakesAReservedCoroutineBeforeAnOrdinaryOne) {
    asio::io_context io;
    ReadyJobs ready(BandPreference({6, 3, 1}));
    auto any = start_waiting(io, ready, 1);
    auto reserved = start_waiting(io, ready, 1, ReadyJobs::Takes::high_band_only);
    ready.push(batch_of({{"conveyor.orders.high", "h1"}}));
    io.poll();
    io.restart();
    EXPECT_EQ(reserved[0]->taken.id, "h1");
    EXPECT_FALSE(any[0]->taken.done);
    (void)ready.close();
    io.poll();
}

TEST(ReadyJobs, AReservedCoroutineWokenForAHighJobAnotherTookPassesItsWakeToTheOtherBands) {
    asio::io_context io;
    asio::io_context elsewhere;
    ReadyJobs ready(BandPreference({6, 3, 1}));
    auto reserved = start_waiting(io, ready, 1, ReadyJobs::Takes::high_band_only);
    auto any = start_waiting(io, ready, 1);
    ready.push(batch_of({{"conveyor.diag.high", "h1"}}));
    // Before the reserved coroutine runs, one finishing a job on another thread takes the high job.
    auto finishing = start_waiting(elsewhere, ready, 1);
    ASSERT_EQ(finishing[0]->taken.id, "h1");
    ready.push(batch_of({{"conveyor.diag", "n1"}}));
    io.poll();
    EXPECT_FALSE(reserved[0]->taken.done);
    EXPECT_EQ(any[0]->taken.id, "n1") << "the normal job waits while a coroutine that may take it sleeps";
    (void)ready.close();
    io.restart();
    io.poll();
}

TEST(ReadyJobs, ACancelledWaitLeavesTheLine) {
    asio::io_context io;
    ReadyJobs ready(BandPreference({6, 3, 1}));
    auto waiting = start_waiting(io, ready, 2);
    waiting[0]->cancel.emit(asio::cancellation_type::terminal);
    io.poll();
    io.restart();
    EXPECT_EQ(waiting[0]->taken.error, asio::error::operation_aborted);
    ready.push(batch_of({{"conveyor.diag", "n1"}}));
    io.poll();
    EXPECT_EQ(waiting[1]->taken.id, "n1");
}

TEST(ReadyJobs, AWakeThatMeetsACancelledWaitGoesOnToTheNextInLine) {
    asio::io_context io;
    ReadyJobs ready(BandPreference({6, 3, 1}));
    auto waiting = start_waiting(io, ready, 2);
    // co_spawn delivers the cancel through the executor: one handler cancels the wait, whose completion is queued
    // but has not run when the push wakes the first in line.
    waiting[0]->cancel.emit(asio::cancellation_type::terminal);
    io.run_one();
    ASSERT_FALSE(waiting[0]->taken.done);
    ready.push(batch_of({{"conveyor.diag", "n1"}}));
    io.poll();
    io.restart();
    EXPECT_EQ(waiting[0]->taken.error, asio::error::operation_aborted);
    EXPECT_EQ(waiting[1]->taken.id, "n1");
    // The cancelled one is out of the line: the next push finds a fresh waiter, not it.
    auto next = start_waiting(io, ready, 1);
    ready.push(batch_of({{"conveyor.diag", "n2"}}));
    io.poll();
    EXPECT_EQ(next[0]->taken.id, "n2");
}

TEST(ReadyJobs, CloseHandsBackWhatNobodyTook) {
    ReadyJobs ready(BandPreference({6, 3, 1}));
    ready.push(batch_of({{"conveyor.diag", "n1"}, {"conveyor.diag.high", "h1"}}));
    EXPECT_EQ(ready.close().size(), 2U);
    asio::io_context io;
    auto late = start_waiting(io, ready, 1);
    EXPECT_EQ(late[0]->taken.error, asio::experimental::error::channel_closed);
}

TEST(ReadyJobs, EveryDeliveryIsTakenExactlyOnceByCoroutinesOnOtherThreads) {
    constexpr int kTakers = 64;
    constexpr int kDeliveries = 20'000;
    asio::thread_pool pool(2);
    ReadyJobs ready(BandPreference({6, 3, 1}));
    std::vector<std::unique_ptr<ReadyJobs::Taker>> takers;
    std::atomic<int> taken{0};
    std::vector<std::atomic<int>> times(kDeliveries);
    for (int i = 0; i < kTakers; ++i) {
        auto strand = asio::make_strand(pool);
        auto& taker = *takers.emplace_back(std::make_unique<ReadyJobs::Taker>(
            strand, i < 4 ? ReadyJobs::Takes::high_band_only : ReadyJobs::Takes::any_band));
        asio::co_spawn(
            strand,
            [&ready, &taker, &taken, &times]() -> asio::awaitable<void> {
                while (true) {
                    auto [error, delivery] = co_await ready.take(taker);
                    if (error) {
                        co_return;
                    }
                    ++times[static_cast<std::size_t>(std::stoi(delivery.message.properties.message_id))];
                    ++taken;
                }
            },
            asio::detached);
    }
    const std::array<const char*, 3> queues{"conveyor.diag.high", "conveyor.diag", "conveyor.diag.low"};
    for (int first = 0; first < kDeliveries; first += 100) {
        amqp::DeliveryBatch batch;
        for (int id = first; id < first + 100; ++id) {
            batch.push_back(delivery_in(queues[static_cast<std::size_t>(id) % 3], std::to_string(id)));
        }
        ready.push(std::move(batch));
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (taken < kDeliveries && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_TRUE(ready.close().empty());
    pool.join();
    EXPECT_EQ(taken, kDeliveries);
    EXPECT_EQ(std::count_if(times.begin(), times.end(), [](const auto& n) { return n != 1; }), 0);
}

}  // namespace
}  // namespace conveyor::worker
