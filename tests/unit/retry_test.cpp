#include <gtest/gtest.h>

#include "conveyor/core/job.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(RetryPolicy, CeilingDoublesFromTheBaseUpToTheCap) {
    RetryPolicy policy;
    policy.base_delay = seconds(1);
    policy.max_delay = seconds(10);
    EXPECT_EQ(policy.ceiling(1), seconds(1));
    EXPECT_EQ(policy.ceiling(2), seconds(2));
    EXPECT_EQ(policy.ceiling(4), seconds(8));
    EXPECT_EQ(policy.ceiling(5), seconds(10));
    EXPECT_EQ(policy.ceiling(1000), seconds(10));
}

TEST(RetryPolicy, FullJitterSpansZeroToTheCeilingAndHonoursALongerRequest) {
    RetryPolicy policy;
    policy.base_delay = seconds(2);
    EXPECT_EQ(policy.delay_after(3, milliseconds(0), 0.0), milliseconds(0));
    EXPECT_EQ(policy.delay_after(3, milliseconds(0), 0.5), seconds(4));
    EXPECT_EQ(policy.delay_after(3, milliseconds(0), 0.999999), milliseconds(7999));
    EXPECT_EQ(policy.delay_after(3, seconds(60), 0.5), seconds(60));
    EXPECT_EQ(policy.delay_after(1, milliseconds(0), 2.0), seconds(2));
}

std::string bits_of(std::string_view key) {
    return std::string(key.substr(0, std::size_t{2} * topology::kDelayLevels));
}

TEST(DelayLadder, RoutingKeySpellsTheDelayInWholeSecondsHighestBitFirst) {
    const auto key = topology::delay_routing_key(seconds(5), "diag.fail");
    EXPECT_EQ(bits_of(key), "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.1.");
    EXPECT_TRUE(key.ends_with(".diag.fail"));
    EXPECT_EQ(topology::job_type_of_routing_key(key), "diag.fail");
}

TEST(DelayLadder, DelaysRoundUpToWholeSecondsWithinOneSecondAndTheMaximum) {
    EXPECT_EQ(topology::delay_routing_key(milliseconds(0), "a.b"), topology::delay_routing_key(seconds(1), "a.b"));
    EXPECT_EQ(topology::delay_routing_key(milliseconds(1001), "a.b"), topology::delay_routing_key(seconds(2), "a.b"));
    EXPECT_EQ(topology::delay_routing_key(std::chrono::hours(24 * 365), "a.b"),
              topology::delay_routing_key(topology::kMaxDelay, "a.b"));
    EXPECT_EQ(bits_of(topology::delay_routing_key(topology::kMaxDelay, "a.b")),
              "1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.");
    EXPECT_GE(topology::kMaxDelay, std::chrono::hours(24 * 30));
}

TEST(DelayLadder, OrdinaryRoutingKeysAreTheirOwnJobType) {
    EXPECT_EQ(topology::job_type_of_routing_key("orders.place"), "orders.place");
    EXPECT_EQ(topology::job_type_of_routing_key("0.1.orders.place"), "0.1.orders.place");
    EXPECT_EQ(topology::job_type_of_routing_key(""), "");
}

/// Walks a delay key through the declared ladder the way the broker's topic matching would, and adds up the TTLs
/// of the queues it waits in.
seconds simulated_wait(const amqp::Topology& topology, const std::string& key) {
    auto matches = [&](const std::string& pattern) {
        // Patterns are "*." repeated, then one bit word, then "#": compare that one word.
        const auto stars = pattern.find_first_not_of("*.");
        const auto word = stars / 2;
        return key[2 * word] == pattern[stars];
    };
    seconds waited{0};
    std::string exchange = topology::delay_entry_exchange();
    while (exchange != topology::kDelayDueExchange) {
        bool moved = false;
        for (const auto& binding : topology.bindings) {
            if (!moved && binding.exchange == exchange && matches(binding.routing_key)) {
                const auto& queue = *std::find_if(topology.queues.begin(), topology.queues.end(),
                                                  [&](const auto& q) { return q.name == binding.queue; });
                waited += std::chrono::duration_cast<seconds>(
                    milliseconds(std::get<std::int64_t>(*amqp::find_header(queue.arguments, "x-message-ttl"))));
                exchange = std::get<std::string>(*amqp::find_header(queue.arguments, "x-dead-letter-exchange"));
                moved = true;
            }
        }
        for (const auto& binding : topology.exchange_bindings) {
            if (!moved && binding.source == exchange && matches(binding.routing_key)) {
                exchange = binding.destination;
                moved = true;
            }
        }
        EXPECT_TRUE(moved) << "stuck at " << exchange;
        if (!moved) {
            break;
        }
    }
    return waited;
}

TEST(DelayLadder, EveryDelayWaitsExactlyItsSecondsInTheDeclaredTopology) {
    const std::vector<std::string> families{"diag"};
    const auto topology = topology::job_topology(families);
    for (const auto delay : {seconds(1), seconds(2), seconds(3), seconds(37), seconds(3600), seconds(86'400 * 30 + 7),
                             topology::kMaxDelay}) {
        EXPECT_EQ(simulated_wait(topology, topology::delay_routing_key(delay, "diag.fail")), delay);
    }
}

TEST(DelayLadder, JobQueuesCarryTheBrokersPoisonBackstop) {
    const std::vector<std::string> families{"orders"};
    const auto topology = topology::job_topology(families, 7);
    const auto& queue = *std::find_if(topology.queues.begin(), topology.queues.end(),
                                      [](const auto& q) { return q.name == "conveyor.orders"; });
    EXPECT_EQ(std::get<std::int64_t>(*amqp::find_header(queue.arguments, "x-delivery-limit")), 7);
    EXPECT_EQ(std::get<std::string>(*amqp::find_header(queue.arguments, "x-dead-letter-routing-key")),
              "conveyor.orders.dlq");
    EXPECT_EQ(std::get<std::string>(*amqp::find_header(queue.arguments, "x-dead-letter-strategy")), "at-least-once");
    EXPECT_EQ(std::get<std::string>(*amqp::find_header(queue.arguments, "x-overflow")), "reject-publish");
}

}  // namespace
}  // namespace conveyor
