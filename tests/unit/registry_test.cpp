#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include "conveyor/core/job.hpp"
#include "conveyor/jobs/jobs.hpp"

namespace conveyor {
namespace {

boost::asio::awaitable<Outcome> succeed(JobContext&) {
    co_return Success{};
}

TEST(JobRegistry, FindsWhatWasAdded) {
    JobRegistry registry;
    registry.add("orders.place", succeed);
    JobOptions options;
    options.timeout = std::chrono::seconds(5);
    options.retry = RetryPolicy{};
    options.retry->max_attempts = 3;
    registry.add("orders.cancel", succeed, options);
    registry.add("emails.send", succeed);
    ASSERT_NE(registry.find("orders.cancel"), nullptr);
    EXPECT_EQ(registry.find("orders.cancel")->options.timeout, std::chrono::seconds(5));
    EXPECT_EQ(registry.find("orders.cancel")->options.retry->max_attempts, 3U);
    EXPECT_EQ(registry.find("orders.refund"), nullptr);
    EXPECT_EQ(registry.types_of_family("orders"), (std::vector<std::string>{"orders.cancel", "orders.place"}));
    EXPECT_EQ(registry.types_of_family("order"), std::vector<std::string>{});
    EXPECT_EQ(registry.types().size(), 3U);
}

TEST(JobRegistry, RefusesDuplicatesAndMalformedTypes) {
    JobRegistry registry;
    registry.add("diag.noop", succeed);
    EXPECT_THROW(registry.add("diag.noop", succeed), std::invalid_argument);
    EXPECT_THROW(registry.add("noop", succeed), std::invalid_argument);
    EXPECT_THROW(registry.add("diag.x", JobHandler{}), std::invalid_argument);
}

/// Runs a registered diag job on a real io_context and returns its outcome.
Outcome run_diag(const std::string& type, const std::string& body, std::uint32_t attempt = 1) {
    JobRegistry registry;
    jobs::register_diag_jobs(registry);
    amqp::Message message;
    message.routing_key = type;
    message.body = body;
    message.properties.message_id = "job-1";
    amqp::set_header(message.properties.headers, "x-conveyor-attempt", std::int64_t{attempt});
    simdjson::dom::parser parser;
    auto envelope = parse_envelope(message, {}, parser).value();
    const auto trace = TraceContext::start_span(envelope.traceparent);
    const JobLogger log({.job_id = envelope.job_id,
                         .type = envelope.type,
                         .correlation_id = envelope.correlation_id,
                         .queue = "conveyor.diag",
                         .attempt = envelope.attempt,
                         .trace = &trace});
    JobContext context(envelope, trace, log, std::chrono::steady_clock::now() + std::chrono::seconds(5));
    boost::asio::io_context io;
    auto future = boost::asio::co_spawn(io, registry.find(type)->handler(context), boost::asio::use_future);
    io.run();
    return future.get();
}

TEST(DiagJobs, NoopSucceeds) {
    EXPECT_TRUE(std::holds_alternative<Success>(run_diag("diag.noop", "{}")));
}

TEST(DiagJobs, SleepWaitsOnATimer) {
    const auto start = std::chrono::steady_clock::now();
    EXPECT_TRUE(std::holds_alternative<Success>(run_diag("diag.sleep", R"({"ms": 30})")));
    EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(30));
}

TEST(DiagJobs, SleepRejectsABadPayload) {
    for (const char* body : {"{}", R"({"ms": "x"})", R"({"ms": -1})", R"({"ms": 99999999999})"}) {
        const auto outcome = run_diag("diag.sleep", body);
        ASSERT_TRUE(std::holds_alternative<DeadLetter>(outcome)) << body;
        EXPECT_EQ(std::get<DeadLetter>(outcome).reason, "invalid_payload") << body;
    }
}

TEST(DiagJobs, FailFailsTheFirstNAttempts) {
    EXPECT_TRUE(std::holds_alternative<Retry>(run_diag("diag.fail", R"({"times": 2})", 1)));
    EXPECT_TRUE(std::holds_alternative<Retry>(run_diag("diag.fail", R"({"times": 2})", 2)));
    EXPECT_TRUE(std::holds_alternative<Success>(run_diag("diag.fail", R"({"times": 2})", 3)));
    const auto permanent = run_diag("diag.fail", R"({"times": 1, "permanent": true})");
    ASSERT_TRUE(std::holds_alternative<DeadLetter>(permanent));
    EXPECT_EQ(std::get<DeadLetter>(permanent).reason, "permanent_failure");
    EXPECT_TRUE(std::holds_alternative<Success>(run_diag("diag.fail", R"({"times": 0})")));
    EXPECT_TRUE(std::holds_alternative<DeadLetter>(run_diag("diag.fail", R"({"permanent": "yes"})")));
}

}  // namespace
}  // namespace conveyor
