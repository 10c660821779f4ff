#include "conveyor/core/config.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>

#include "conveyor/core/topology.hpp"

namespace conveyor {
namespace {

using std::chrono::milliseconds;

TEST(ParseDuration, AcceptsEveryUnit) {
    EXPECT_EQ(parse_duration("250ms"), milliseconds(250));
    EXPECT_EQ(parse_duration("30s"), milliseconds(30'000));
    EXPECT_EQ(parse_duration("30"), milliseconds(30'000));
    EXPECT_EQ(parse_duration("5m"), milliseconds(300'000));
    EXPECT_EQ(parse_duration("2h"), milliseconds(7'200'000));
    EXPECT_EQ(parse_duration("14d"), std::chrono::hours(24 * 14));
    EXPECT_EQ(parse_duration("0s"), milliseconds(0));
}

TEST(ParseDuration, RejectsGarbageWithTheReason) {
    for (const char* bad : {"", "s", "-1s", "10 s", "1.5s", "10w", "99999999999999999999h"}) {
        EXPECT_THROW((void)parse_duration(bad), std::invalid_argument) << bad;
    }
    try {
        (void)parse_duration("10w");
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("unknown unit 'w'"), std::string::npos) << e.what();
    }
}

TEST(Topology, FamiliesAreCheckedAgainstTheContract) {
    EXPECT_EQ(topology::parse_families("diag, orders,diag"), (std::vector<std::string>{"diag", "orders"}));
    EXPECT_THROW((void)topology::parse_families("diag,billing"), std::invalid_argument);
    EXPECT_THROW((void)topology::parse_families(" , "), std::invalid_argument);
}

TEST(Topology, NamesFollowTheWireContract) {
    EXPECT_EQ(topology::queue_name("orders"), "conveyor.orders");
    EXPECT_EQ(topology::dead_letter_queue_name("orders"), "conveyor.orders.dlq");
    EXPECT_EQ(topology::family_of_queue("conveyor.orders"), "orders");
    EXPECT_EQ(topology::family_of_queue("conveyor.orders.dlq"), "");
    EXPECT_EQ(topology::family_of_queue("other"), "");
    EXPECT_EQ(topology::family_of_queue("conveyor.orders.high"), "orders");
    EXPECT_EQ(topology::family_of_queue("conveyor.orders.low"), "orders");
    EXPECT_EQ(topology::family_of_queue("conveyor.orders.normal"), "");
    EXPECT_EQ(topology::queue_name("orders", topology::Band::high), "conveyor.orders.high");
    EXPECT_EQ(topology::queue_name("orders", topology::Band::normal), "conveyor.orders");
    EXPECT_EQ(topology::parse_band("low"), topology::Band::low);
    EXPECT_EQ(topology::parse_band("urgent"), std::nullopt);
    EXPECT_EQ(topology::band_of_queue("conveyor.orders.high"), topology::Band::high);
    EXPECT_EQ(topology::band_of_queue("conveyor.orders.low"), topology::Band::low);
    EXPECT_EQ(topology::band_of_queue("conveyor.orders"), topology::Band::normal);
}

TEST(Topology, AWorkersControlQueueIsExclusiveAndItsOwn) {
    const auto first = topology::control_queue("worker-1");
    const auto second = topology::control_queue("worker-1");
    EXPECT_TRUE(first.exclusive);
    EXPECT_TRUE(first.name.starts_with("conveyor.control.worker-1."));
    EXPECT_NE(first.name, second.name);
}

TEST(Topology, DeclaresThreeBandQueuesAndADeadLetterQueuePerFamily) {
    const std::vector<std::string> families{"diag", "emails"};
    const auto topology = topology::job_topology(families);
    EXPECT_EQ(topology.exchanges[0].name, "conveyor.jobs");
    EXPECT_EQ(topology.exchanges[0].type, "topic");
    EXPECT_EQ(topology.exchanges[1].name, "conveyor.control");
    EXPECT_EQ(topology.exchanges[1].type, "fanout");
    // The job and control exchanges, a level exchange per delay level, the ladder's exit, and per family its bands'
    // headers exchange and the alternate exchange into its normal band.
    EXPECT_EQ(topology.exchanges.size(), 3 + topology::kDelayLevels + 2 * families.size());
    EXPECT_EQ(topology.queues.size(), 4 * families.size() + topology::kDelayLevels);
    for (const auto& queue : topology.queues) {
        const auto* type = amqp::find_header(queue.arguments, "x-queue-type");
        ASSERT_NE(type, nullptr) << queue.name;
        EXPECT_EQ(std::get<std::string>(*type), "quorum");
        // Replicated on three nodes of a cluster, whichever client declares it first.
        const auto* group_size = amqp::find_header(queue.arguments, "x-quorum-initial-group-size");
        ASSERT_NE(group_size, nullptr) << queue.name;
        EXPECT_EQ(std::get<std::int64_t>(*group_size), 3);
    }
    auto bound_by = [&](const std::string& queue, std::string_view exchange) {
        return std::find_if(topology.bindings.begin(), topology.bindings.end(), [&](const auto& binding) {
            return binding.queue == queue && binding.exchange == exchange;
        });
    };
    // Jobs reach their queues through the family's bands exchange only.
    EXPECT_EQ(bound_by("conveyor.emails", topology::kJobsExchange), topology.bindings.end());
    EXPECT_EQ(bound_by("conveyor.emails", topology::kDelayDueExchange), topology.bindings.end());
    const auto into_bands = [&](std::string_view source) {
        return std::find_if(topology.exchange_bindings.begin(), topology.exchange_bindings.end(), [&](const auto& b) {
            return b.source == source && b.destination == "conveyor.emails.bands";
        });
    };
    ASSERT_NE(into_bands(topology::kJobsExchange), topology.exchange_bindings.end());
    EXPECT_EQ(into_bands(topology::kJobsExchange)->routing_key, "emails.#");
    ASSERT_NE(into_bands(topology::kDelayDueExchange), topology.exchange_bindings.end());
    EXPECT_TRUE(into_bands(topology::kDelayDueExchange)->routing_key.ends_with(".emails.#"));
    EXPECT_EQ(bound_by("conveyor.emails.dlq", topology::kJobsExchange), topology.bindings.end());
}

TEST(Topology, TheHeadersExchangeSendsEachPriorityToItsBandAndTheRestToNormal) {
    const std::vector<std::string> families{"orders"};
    const auto topology = topology::job_topology(families);
    const auto bands = std::find_if(topology.exchanges.begin(), topology.exchanges.end(),
                                    [](const auto& exchange) { return exchange.name == "conveyor.orders.bands"; });
    ASSERT_NE(bands, topology.exchanges.end());
    EXPECT_EQ(bands->type, "headers");
    EXPECT_EQ(amqp::find_text_header(bands->arguments, "alternate-exchange"), "conveyor.orders.normal");
    for (const auto band : topology::kBands) {
        const auto queue = topology::queue_name("orders", band);
        const auto binding = std::find_if(topology.bindings.begin(), topology.bindings.end(), [&](const auto& b) {
            return b.queue == queue && b.exchange == "conveyor.orders.bands";
        });
        ASSERT_NE(binding, topology.bindings.end()) << queue;
        EXPECT_EQ(amqp::find_text_header(binding->arguments, topology::kPriorityHeader), topology::band_name(band));
        EXPECT_EQ(amqp::find_text_header(binding->arguments, "x-match"), "all-with-x");
    }
    const auto unbanded = std::find_if(topology.bindings.begin(), topology.bindings.end(),
                                       [](const auto& b) { return b.exchange == "conveyor.orders.normal"; });
    ASSERT_NE(unbanded, topology.bindings.end());
    EXPECT_EQ(unbanded->queue, "conveyor.orders");
    // What versions before the bands bound straight to the normal queue goes, or a high job would be there too.
    ASSERT_EQ(topology.obsolete_bindings.size(), 2U);
    EXPECT_EQ(topology.obsolete_bindings[0].queue, "conveyor.orders");
    EXPECT_EQ(topology.obsolete_bindings[0].exchange, topology::kJobsExchange);
    EXPECT_EQ(topology.obsolete_bindings[1].exchange, topology::kDelayDueExchange);
}

TEST(UtcTimestamp, IsUtcWhateverTheProcessTimeZone) {
    const char* saved = std::getenv("TZ");
    const std::string previous = saved != nullptr ? saved : "";
    ::setenv("TZ", "Asia/Tokyo", 1);
    ::tzset();
    using namespace std::chrono;
    const auto at = sys_days{year{2026} / 11 / 22} + hours(7) + minutes(5) + seconds(9) + milliseconds(42);
    EXPECT_EQ(utc_timestamp(at), "2026-11-22T07:05:09.042Z");
    EXPECT_EQ(utc_timestamp_seconds(floor<seconds>(at)), "2026-11-22T07:05:09Z");
    EXPECT_EQ(utc_timestamp(sys_days{year{1999} / 12 / 31} + hours(23) + minutes(59) + seconds(59)),
              "1999-12-31T23:59:59.000Z");
    if (saved != nullptr) {
        ::setenv("TZ", previous.c_str(), 1);
    } else {
        ::unsetenv("TZ");
    }
    ::tzset();
}

}  // namespace
}  // namespace conveyor
