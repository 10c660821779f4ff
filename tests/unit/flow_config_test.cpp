#include "conveyor/core/flow_config.hpp"

#include <gtest/gtest.h>

#include <boost/json/serialize.hpp>
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
              "flow.yaml:3: unknown setting 'concurency' in orders.place (known: concurrency)");
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

}  // namespace
}  // namespace conveyor::flow
