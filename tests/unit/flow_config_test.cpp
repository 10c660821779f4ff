#include "conveyor/core/flow_config.hpp"

#include <gtest/gtest.h>

#include <boost/json/serialize.hpp>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>

namespace conveyor::flow {
namespace {

/// The message of the std::invalid_argument that parsing `yaml` throws, or "" if it parses.
std::string refusal(const std::string& yaml) {
    try {
        (void)parse(yaml, "flow.yaml");
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return {};
}

TEST(FlowConfig, ReadsPerKeyConcurrencyLimits) {
    const auto config = parse(R"(# limits
jobs:
  orders.place:
    concurrency:
      key: /customer_id
      limit: 2
  emails.send:
    concurrency: {key: /to/domain, limit: 10}
)",
                              "flow.yaml");
    ASSERT_EQ(config.jobs.size(), 2U);
    const auto* orders = config.find("orders.place");
    ASSERT_NE(orders, nullptr);
    ASSERT_TRUE(orders->concurrency);
    EXPECT_EQ(orders->concurrency->key_pointer, "/customer_id");
    EXPECT_EQ(orders->concurrency->limit, 2U);
    EXPECT_EQ(config.find("emails.send")->concurrency->key_pointer, "/to/domain");
    EXPECT_EQ(config.find("payments.charge"), nullptr);
    EXPECT_EQ(boost::json::serialize(to_json(config)),
              R"({"jobs":{"emails.send":{"concurrency":{"key":"/to/domain","limit":10}},)"
              R"("orders.place":{"concurrency":{"key":"/customer_id","limit":2}}}})");
}

TEST(FlowConfig, AnEmptyFileOrNoJobsMeansNoLimits) {
    EXPECT_TRUE(parse("", "flow.yaml").jobs.empty());
    EXPECT_TRUE(parse("# nothing limited\n", "flow.yaml").jobs.empty());
    EXPECT_TRUE(parse("jobs:\n", "flow.yaml").jobs.empty());
}

TEST(FlowConfig, ABadFileNamesTheLineAndWhatIsWrong) {
    EXPECT_EQ(refusal("jobs:\n  orders.place:\n    concurrency:\n      key: customer_id\n      limit: 2\n"),
              "flow.yaml:4: orders.place concurrency key must be a JSON pointer into the payload, such as "
              "/customer_id");
    EXPECT_EQ(refusal("jobs:\n  orders.place:\n    concurrency:\n      key: /c\n      limit: 0\n"),
              "flow.yaml:5: orders.place concurrency limit must be a whole number from 1 to 100000");
    EXPECT_EQ(refusal("jobs:\n  orders.place:\n    concurrency:\n      key: /c\n      limit: two\n"),
              "flow.yaml:5: orders.place concurrency limit must be a whole number from 1 to 100000");
    EXPECT_EQ(refusal("jobs:\n  orders.place:\n    concurency:\n      key: /c\n"),
              "flow.yaml:3: unknown setting 'concurency' in orders.place (known: concurrency, rate)");
    EXPECT_EQ(refusal("jobs:\n  orders.place:\n    concurrency:\n      key: /c\n"),
              "flow.yaml:4: orders.place concurrency needs both 'key' (a JSON pointer) and 'limit'");
    EXPECT_EQ(refusal("jobs:\n  orders:\n    concurrency: {key: /c, limit: 1}\n"),
              "flow.yaml:3: 'orders' is not a job type (family.action, e.g. orders.place)");
    EXPECT_EQ(refusal("limits:\n  orders.place: {}\n"),
              "flow.yaml:1: unknown setting 'limits' in the flow file (known: jobs)");
    EXPECT_EQ(refusal("jobs:\n  orders.place:\n    concurrency: {key: /a, limit: 1}\n  orders.place:\n"
                      "    concurrency: {key: /b, limit: 1}\n"),
              "flow.yaml:4: 'orders.place' is set twice in 'jobs'");
    EXPECT_EQ(refusal("jobs:\n  orders.place:\n    concurrency: {key: /a~2, limit: 1}\n"),
              "flow.yaml:3: orders.place concurrency key must be a JSON pointer into the payload, such as "
              "/customer_id");
    EXPECT_EQ(refusal("jobs: [\n"), "flow.yaml:2: not valid YAML: end of sequence flow not found");
}

TEST(FlowConfig, ReadsRateLimitsWithATenthOfTheRateAsTheDefaultBurst) {
    const auto config = parse(R"(jobs:
  payments.charge:
    rate: {per_second: 50}
  emails.send:
    rate:
      per_second: 0.5
      burst: 3
      key: /to
  orders.place:
    concurrency: {key: /customer_id, limit: 2}
    rate: {per_second: 1000, burst: 20}
)",
                              "flow.yaml");
    const auto& payments = *config.find("payments.charge")->rate;
    EXPECT_DOUBLE_EQ(payments.per_second, 50);
    EXPECT_EQ(payments.burst, 5U);
    EXPECT_EQ(payments.key_pointer, "");
    const auto& emails = *config.find("emails.send")->rate;
    EXPECT_DOUBLE_EQ(emails.per_second, 0.5);
    EXPECT_EQ(emails.burst, 3U);
    EXPECT_EQ(emails.key_pointer, "/to");
    EXPECT_EQ(config.find("orders.place")->concurrency->limit, 2U);
    EXPECT_EQ(config.find("orders.place")->rate->burst, 20U);
    EXPECT_EQ(
        boost::json::serialize(to_json(config)),
        R"({"jobs":{"emails.send":{"rate":{"per_second":5E-1,"burst":3,"key":"/to"}},)"
        R"("orders.place":{"concurrency":{"key":"/customer_id","limit":2},"rate":{"per_second":1000,"burst":20}},)"
        R"("payments.charge":{"rate":{"per_second":50,"burst":5}}}})");
    EXPECT_EQ(default_burst(0.01), 1U);
    EXPECT_EQ(default_burst(5), 1U);
    EXPECT_EQ(default_burst(11), 2U);
}

TEST(FlowConfig, ABadRateLimitNamesTheLineAndWhatIsWrong) {
    EXPECT_EQ(refusal("jobs:\n  payments.charge:\n    rate: {burst: 5}\n"),
              "flow.yaml:3: payments.charge rate needs 'per_second' (starts per second across the fleet)");
    EXPECT_EQ(refusal("jobs:\n  payments.charge:\n    rate:\n      per_second: 0\n"),
              "flow.yaml:4: payments.charge rate per_second must be a number above 0 and at most 1000000");
    EXPECT_EQ(refusal("jobs:\n  payments.charge:\n    rate:\n      per_second: fast\n"),
              "flow.yaml:4: payments.charge rate per_second must be a number above 0 and at most 1000000");
    EXPECT_EQ(refusal("jobs:\n  payments.charge:\n    rate: {per_second: 50, burst: 0}\n"),
              "flow.yaml:3: payments.charge rate burst must be a whole number from 1 to 1000000");
    EXPECT_EQ(refusal("jobs:\n  payments.charge:\n    rate: {per_second: 50, key: merchant}\n"),
              "flow.yaml:3: payments.charge rate key must be a JSON pointer into the payload, such as /customer_id");
    EXPECT_EQ(refusal("jobs:\n  payments.charge:\n    rate: {per_second: 50, per_minute: 3}\n"),
              "flow.yaml:3: unknown setting 'per_minute' in payments.charge rate (known: per_second, burst, key)");
}

/// The flow file shipped with the local stack and the Kubernetes manifests keeps the fleet under the payment
/// gateway's limit.
TEST(FlowConfig, TheShippedFileLimitsThePaymentGatewaysCalls) {
    std::ifstream file(std::string(CONVEYOR_SOURCE_DIR) + "/deploy/local/flow.yaml");
    ASSERT_TRUE(file) << "deploy/local/flow.yaml is missing";
    const std::string source((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    const auto config = parse(source, "deploy/local/flow.yaml");
    ASSERT_NE(config.find("payments.charge"), nullptr);
    ASSERT_TRUE(config.find("payments.charge")->rate);
    EXPECT_DOUBLE_EQ(config.find("payments.charge")->rate->per_second, 50);
}

}  // namespace
}  // namespace conveyor::flow
