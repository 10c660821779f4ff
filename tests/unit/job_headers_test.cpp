#include "conveyor/core/job_headers.hpp"

#include <gtest/gtest.h>

#include "conveyor/core/utf8.hpp"

namespace conveyor::job_headers {
namespace {

Failure example_failure() {
    return {.reason = "attempts_exhausted",
            .error = "attempt 3 of 3 failed: smtp 451",
            .attempts = 3,
            .original_routing_key = "emails.send",
            .original_queue = "conveyor.emails",
            .failed_at = "2026-12-05T06:00:00.123Z",
            .worker = "worker-7"};
}

TEST(JobHeaders, AStampedFailureReadsBackWhole) {
    amqp::Headers headers;
    stamp_failure(headers, example_failure());
    const auto read = read_failure(headers);
    EXPECT_EQ(read.reason, "attempts_exhausted");
    EXPECT_EQ(read.error, "attempt 3 of 3 failed: smtp 451");
    EXPECT_EQ(read.attempts, 3U);
    EXPECT_EQ(read.original_routing_key, "emails.send");
    EXPECT_EQ(read.original_queue, "conveyor.emails");
    EXPECT_EQ(read.failed_at, "2026-12-05T06:00:00.123Z");
    EXPECT_EQ(read.worker, "worker-7");
    EXPECT_EQ(amqp::find_text_header(headers, kReason), "attempts_exhausted");
}

TEST(JobHeaders, ABrokerDeadLetteredJobReportsItsLastAttemptNumber) {
    amqp::Headers headers;
    amqp::set_header(headers, kAttempt, std::int64_t{4});
    const auto read = read_failure(headers);
    EXPECT_EQ(read.attempts, 4U);
    EXPECT_TRUE(read.reason.empty());
    EXPECT_TRUE(read.worker.empty());
}

TEST(JobHeaders, NegativeAndOversizedCountsAreClamped) {
    amqp::Headers headers;
    amqp::set_header(headers, kAttempts, std::int64_t{-5});
    EXPECT_EQ(read_failure(headers).attempts, 0U);
    amqp::set_header(headers, kAttempts, std::int64_t{1} << 40);
    EXPECT_EQ(read_failure(headers).attempts, UINT32_MAX);
}

TEST(JobHeaders, ARetryStampsItsAttemptErrorAndDueTime) {
    amqp::Headers headers;
    const auto due = std::chrono::system_clock::time_point(std::chrono::milliseconds(1'700'000'000'500));
    stamp_retry(headers, 2, "gateway busy", due);
    const auto* attempt = amqp::find_header(headers, kAttempt);
    ASSERT_NE(attempt, nullptr);
    EXPECT_EQ(std::get<std::int64_t>(*attempt), 2);
    EXPECT_EQ(amqp::find_text_header(headers, kError), "gateway busy");
    EXPECT_EQ(std::get<std::int64_t>(*amqp::find_header(headers, kRetryAt)), 1'700'000'000'500);
}

TEST(JobHeaders, StrippingAFailureLeavesTheJobsOwnHeaders) {
    amqp::Headers headers;
    amqp::set_header(headers, "traceparent", std::string("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    amqp::set_header(headers, kEnqueuedAt, std::int64_t{1'700'000'000'000});
    stamp_failure(headers, example_failure());
    stamp_retry(headers, 3, "x", std::chrono::system_clock::now());
    amqp::set_header(headers, "x-death", std::string("table"));
    amqp::set_header(headers, "x-first-death-queue", std::string("conveyor.emails"));
    amqp::set_header(headers, "x-last-death-reason", std::string("delivery_limit"));
    amqp::set_header(headers, "x-delivery-count", std::int64_t{20});
    strip_failure(headers);
    ASSERT_EQ(headers.size(), 2U);
    EXPECT_EQ(headers[0].first, "traceparent");
    EXPECT_EQ(headers[1].first, kEnqueuedAt);
}

TEST(JobHeaders, AReplayRecordsWhenWhoAndWhichDeadLetter) {
    amqp::Headers headers;
    stamp_replay(headers, std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000)), "ops@example",
                 "42");
    EXPECT_EQ(amqp::find_text_header(headers, kReplayedAt), "2023-11-14T22:13:20.000Z");
    EXPECT_EQ(amqp::find_text_header(headers, kReplayedBy), "ops@example");
    EXPECT_EQ(amqp::find_text_header(headers, kReplayedFrom), "42");
}

TEST(JobHeaders, ALongErrorIsCutBetweenCharacters) {
    std::string error(kMaxErrorBytes - 1, 'a');
    error += "é and more";
    amqp::Headers headers;
    auto failure = example_failure();
    failure.error = error;
    stamp_failure(headers, failure);
    const auto stored = std::string(amqp::find_text_header(headers, kError));
    EXPECT_EQ(stored, std::string(kMaxErrorBytes - 1, 'a') + "…");
    EXPECT_EQ(utf8::sanitized(stored), stored);
    EXPECT_EQ(bounded("short", 10), "short");
}

}  // namespace
}  // namespace conveyor::job_headers
