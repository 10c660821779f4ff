// amqp::Connection::async_publish against the real broker under a memory alarm: its deadline and its cancellation
// slot end a publish the broker holds back, and a publish given up before it was sent is never sent after.
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "worker_fixture.hpp"

namespace conveyor::testing {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

constexpr const char* kSentQueue = "conveyor.test.publish-deadline.sent";
constexpr const char* kHeldQueue = "conveyor.test.publish-deadline.held";

struct Outcome {
    error_code error;
    Clock::duration took{};
};

amqp::Message to_queue(const std::string& queue, const std::string& id) {
    amqp::Message message;
    message.routing_key = queue;
    message.properties.message_id = id;
    message.body = "{}";
    return message;
}

/// One publish, waited for on an io_context of its own; `cancel_after` emits its cancellation slot then.
Outcome publish(amqp::Connection& connection, amqp::Message message, std::optional<std::chrono::milliseconds> timeout,
                std::optional<std::chrono::milliseconds> cancel_after = std::nullopt) {
    asio::io_context io;
    asio::cancellation_signal cancel;
    asio::steady_timer cancel_timer(io);
    if (cancel_after) {
        cancel_timer.expires_after(*cancel_after);
        cancel_timer.async_wait([&cancel](error_code error) {
            if (!error) {
                cancel.emit(asio::cancellation_type::terminal);
            }
        });
    }
    Outcome outcome;
    const auto started = Clock::now();
    connection.async_publish(std::move(message), timeout,
                             asio::bind_cancellation_slot(cancel.slot(), asio::bind_executor(io, [&](error_code error) {
                                                              outcome = {error, Clock::now() - started};
                                                              cancel_timer.cancel();
                                                          })));
    io.run();
    return outcome;
}

std::uint32_t ready_in(amqp::Connection& connection, const std::string& queue) {
    asio::io_context io;
    amqp::QueueCounts counts;
    connection.async_queue_counts(queue, asio::bind_executor(io, [&](error_code error, amqp::QueueCounts c) {
                                      EXPECT_FALSE(error) << error.message();
                                      counts = c;
                                  }));
    io.run();
    return counts.messages;
}

TEST(AmqpPublish, EndsAtItsDeadlineOrWhenCancelledWhileTheBrokerBlocksAndWhatWasNotSentStaysUnsent) {
    amqp::ConnectionSettings settings;
    settings.url = amqp::Url::parse(amqp_url());
    settings.name = "publish-deadline-test";
    amqp::Topology topology;
    topology.queues = {{kSentQueue, {}, true}, {kHeldQueue, {}, true}};
    amqp::Connection connection(settings, topology);
    connection.start();
    ASSERT_TRUE(eventually([&] { return connection.connected(); }, 20s)) << connection.last_error();

    MemoryAlarm alarm;
    // The broker blocks a connection when it next publishes: this publish is sent, and its confirm never comes.
    const auto sent = publish(connection, to_queue(kSentQueue, "sent-1"), 1500ms);
    EXPECT_EQ(sent.error, amqp::Errc::timed_out) << sent.error.message();
    EXPECT_GE(sent.took, 1400ms);
    EXPECT_LT(sent.took, 6s);
    ASSERT_TRUE(eventually([&] { return connection.blocked(); }, 10s)) << "no connection.blocked from the broker";

    // Blocked: these wait unsent until their deadline or their cancellation.
    const auto expired = publish(connection, to_queue(kHeldQueue, "held-expired"), 1000ms);
    EXPECT_EQ(expired.error, amqp::Errc::timed_out) << expired.error.message();
    EXPECT_LT(expired.took, 5s);
    const auto cancelled = publish(connection, to_queue(kHeldQueue, "held-cancelled"), std::nullopt, 500ms);
    EXPECT_EQ(cancelled.error, asio::error::operation_aborted) << cancelled.error.message();
    EXPECT_GE(cancelled.took, 450ms);
    EXPECT_LT(cancelled.took, 5s);

    alarm.lift();
    const auto after = publish(connection, to_queue(kHeldQueue, "held-after"), 30'000ms);
    EXPECT_FALSE(after.error) << after.error.message();
    // Only the publish made after the alarm reached the queue: the two given up while waiting were never sent.
    EXPECT_EQ(ready_in(connection, kHeldQueue), 1U);
    // The one given up after it was sent has an unknown outcome (here the broker had it and queues it now); its
    // late confirm found no caller and broke nothing.
    EXPECT_LE(ready_in(connection, kSentQueue), 1U);
    connection.stop();
}

}  // namespace
}  // namespace conveyor::testing
