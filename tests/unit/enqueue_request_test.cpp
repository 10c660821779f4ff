#include "enqueue_request.hpp"

#include <gtest/gtest.h>

#include <string>

#include "conveyor/core/json.hpp"
#include "conveyor/jobs/jobs.hpp"

namespace conveyor::scheduler {
namespace {

using std::chrono::milliseconds;
using std::chrono::sys_days;

const auto kNow = std::chrono::system_clock::time_point(sys_days(std::chrono::year(2026) / 12 / 4));

class EnqueueRequestTest : public ::testing::Test {
  protected:
    EnqueueRequest parse(const std::string& body) { return parse_enqueue_request(body, catalogue_, kNow); }

    std::string refusal(const std::string& body) {
        try {
            (void)parse(body);
        } catch (const InvalidRequest& e) {
            return e.what();
        }
        ADD_FAILURE() << "accepted: " << body;
        return {};
    }

    JobCatalogue catalogue_ = jobs::payload_validators();
};

std::string nested_payload(std::size_t levels) {
    std::string text;
    for (std::size_t level = 1; level < levels; ++level) {
        text += R"({"a":)";
    }
    return text + "{}" + std::string(levels - 1, '}');
}

TEST_F(EnqueueRequestTest, ReadsOneJobAndAList) {
    const auto one = parse(R"({"type":"diag.sleep","payload":{ "ms" : 5 },"idempotency_key":"k","delay":"90s"})");
    ASSERT_EQ(one.jobs.size(), 1U);
    EXPECT_FALSE(one.listed);
    EXPECT_EQ(one.jobs[0].type, "diag.sleep");
    EXPECT_EQ(one.jobs[0].payload, R"({"ms":5})");
    EXPECT_EQ(one.jobs[0].idempotency_key, "k");
    EXPECT_EQ(one.jobs[0].run_at, "2026-12-04T00:01:30.000Z");

    const auto listed =
        parse(R"({"jobs":[{"type":"diag.noop"},{"type":"diag.noop","run_at":"2026-12-24T18:00:00+01:00"}]})");
    ASSERT_EQ(listed.jobs.size(), 2U);
    EXPECT_TRUE(listed.listed);
    EXPECT_EQ(listed.jobs[0].run_at, "");
    EXPECT_EQ(listed.jobs[1].run_at, "2026-12-24T17:00:00.000Z");
}

TEST_F(EnqueueRequestTest, ReadsTheBatchAJobJoinsAndRefusesOneThatCannotBeABatchId) {
    const auto listed = parse(R"({"jobs":[{"type":"diag.noop","batch":"import-7"},{"type":"diag.noop"}]})");
    ASSERT_EQ(listed.jobs.size(), 2U);
    EXPECT_EQ(listed.jobs[0].batch, "import-7");
    EXPECT_EQ(listed.jobs[1].batch, "");
    const std::string refused = "batch must be the id of an open batch: 1 to 128 bytes of text";
    EXPECT_EQ(refusal(R"({"type":"diag.noop","batch":""})"), refused);
    EXPECT_EQ(refusal(R"({"type":"diag.noop","batch":7})"), refused);
    EXPECT_EQ(refusal(R"({"type":"diag.noop","batch":")" + std::string(129, 'b') + R"("})"), refused);
    EXPECT_EQ(refusal(R"({"jobs":[{"type":"diag.noop","batch":null}]})"), "jobs[0]: " + refused);
}

TEST_F(EnqueueRequestTest, ReadsAPriorityBandAndRefusesAnyOther) {
    const auto batch = parse(R"({"jobs":[{"type":"diag.noop","priority":"high"},{"type":"diag.noop"},)"
                             R"({"type":"diag.noop","priority":"low"}]})");
    ASSERT_EQ(batch.jobs.size(), 3U);
    EXPECT_EQ(batch.jobs[0].priority, "high");
    EXPECT_EQ(batch.jobs[1].priority, "");
    EXPECT_EQ(batch.jobs[2].priority, "low");
    EXPECT_EQ(refusal(R"({"type":"diag.noop","priority":"urgent"})"), R"(priority must be "high", "normal" or "low")");
    EXPECT_EQ(refusal(R"({"type":"diag.noop","priority":1})"), R"(priority must be "high", "normal" or "low")");
    EXPECT_EQ(refusal(R"({"jobs":[{"type":"diag.noop","priority":"HIGH"}]})"),
              R"(jobs[0]: priority must be "high", "normal" or "low")");
}

TEST_F(EnqueueRequestTest, ReadsAUniqueKeyAndItsWindow) {
    const auto one = parse(R"({"type":"diag.noop","unique_key":"invoice-7","unique_for":3600})");
    EXPECT_EQ(one.jobs[0].unique_key, "invoice-7");
    EXPECT_EQ(one.jobs[0].unique_for, "3600");
    EXPECT_EQ(refusal(R"({"type":"diag.noop","unique_key":"k","unique_for":-1})"),
              "unique_for must be whole seconds from 0 to 315360000");
    EXPECT_EQ(refusal(R"({"type":"diag.noop","unique_key":"k","unique_for":"1h"})"),
              "unique_for must be whole seconds from 0 to 315360000");
    EXPECT_EQ(refusal(R"({"type":"diag.noop","unique_for":60})"), "unique_for needs a unique_key");
    EXPECT_EQ(refusal(R"({"type":"diag.noop","unique_key":""})"), "unique_key must be 1 to 255 bytes");
}

TEST_F(EnqueueRequestTest, RefusesRepeatedKeysAnywhereNamingThem) {
    EXPECT_EQ(refusal(R"({"type":"diag.sleep","payload":{"ms":1,"ms":"x"}})"), R"(duplicate key "ms" at $.payload)");
    EXPECT_EQ(refusal(R"({"type":"diag.fail","type":"diag.noop"})"), R"(duplicate key "type" at $)");
    EXPECT_EQ(refusal(R"({"jobs":[{"type":"diag.noop"}],"jobs":[]})"), R"(duplicate key "jobs" at $)");
    EXPECT_EQ(refusal(R"({"jobs":[{"type":"diag.noop","payload":{"a":[{"b":1,"b":2}]}}]})"),
              R"(duplicate key "b" at $.jobs[0].payload.a[0])");
}

TEST_F(EnqueueRequestTest, RefusesPayloadsDeeperThanTheLimit) {
    EXPECT_NO_THROW((void)parse(R"({"type":"diag.noop","payload":)" + nested_payload(json::kMaxDepth) + "}"));
    const auto deep = refusal(R"({"type":"diag.noop","payload":)" + nested_payload(json::kMaxDepth + 1) + "}");
    EXPECT_NE(deep.find("payload: JSON nests deeper than 32 levels"), std::string::npos) << deep;
    const auto in_batch =
        refusal(R"({"jobs":[{"type":"diag.noop"},{"type":"diag.noop","payload":)" + nested_payload(40) + "}]}");
    EXPECT_TRUE(in_batch.starts_with("jobs[1]: ")) << in_batch;
}

TEST_F(EnqueueRequestTest, RefusesNulInAnyText) {
    EXPECT_NE(refusal(R"({"type":"diag.noop","payload":{"a":"x\u0000"}})").find("U+0000"), std::string::npos);
    EXPECT_NE(refusal(R"({"type":"diag.noop","idempotency_key":"k\u0000z"})").find("U+0000"), std::string::npos);
}

TEST_F(EnqueueRequestTest, BoundsRunAtAndDelayAlike) {
    EXPECT_EQ(refusal(R"({"type":"diag.noop","run_at":"9999-01-01T00:00:00Z"})"), "run_at is more than 10 years ahead");
    EXPECT_EQ(refusal(R"({"type":"diag.noop","run_at":"2036-12-05T00:00:00Z"})"), "run_at is more than 10 years ahead");
    EXPECT_NO_THROW((void)parse(R"({"type":"diag.noop","run_at":"2036-11-30T00:00:00Z"})"));
    EXPECT_EQ(refusal(R"({"type":"diag.noop","delay":400000000})"), "delay must be from 0 seconds to 10 years");
    EXPECT_EQ(refusal(R"({"type":"diag.noop","delay":"4000d"})"), "delay must be from 0 seconds to 10 years");
    EXPECT_EQ(refusal(R"({"type":"diag.noop","delay":-1})"), "delay must be from 0 seconds to 10 years");
    EXPECT_EQ(refusal(R"({"type":"diag.noop","delay":1,"run_at":"2026-12-24T18:00:00Z"})"),
              "give run_at or delay, not both");
}

TEST(ParseRunAtTest, ReadsEveryRfc3339FormWithAnOffset) {
    const auto expected = sys_days(std::chrono::year(2026) / 12 / 24) + std::chrono::hours(17);
    EXPECT_EQ(parse_run_at("2026-12-24T17:00:00Z"), expected);
    EXPECT_EQ(parse_run_at("2026-12-24t17:00z"), expected);
    EXPECT_EQ(parse_run_at("2026-12-24 18:00:00+01:00"), expected);
    EXPECT_EQ(parse_run_at("2026-12-24T12:30:00-0430"), expected);
    EXPECT_EQ(parse_run_at("2026-12-24T18:00:00+01"), expected);
    EXPECT_EQ(parse_run_at("2026-12-24T17:00:00.25Z"), expected + milliseconds(250));
    EXPECT_EQ(parse_run_at("2026-12-24T17:00:00.123456Z"), expected + milliseconds(123));
}

TEST(ParseRunAtTest, RefusesTimesThatDoNotExist) {
    for (const auto* text :
         {"2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-12-24T25:00:00Z", "2026-12-24T17:60:00Z",
          "2026-12-24T17:00:60Z", "0000-01-01T00:00:00Z", "2026-12-24T17:00:00+25:00", "2026-12-24T17:00:00",
          "2026-12-24", "tomorrow", "2026-12-24T17:00:00+01:"}) {
        EXPECT_THROW((void)parse_run_at(text), InvalidRequest) << text;
    }
}

}  // namespace
}  // namespace conveyor::scheduler
