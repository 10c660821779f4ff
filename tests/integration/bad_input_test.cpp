#include <functional>

#include "worker_fixture.hpp"

/// Malformed and hostile messages, each sent to a live worker: every one is dead-lettered with the right reason
/// or handled as the README documents, and the worker goes on with the next job.
namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

/// Publishes through RabbitMQ's management API, which can send what our own client never would (nested tables,
/// arrays, headers of any type), as a foreign publisher might.
void publish_raw(const std::string& json) {
    const char* url = std::getenv("CONVEYOR_RABBITMQ_MANAGEMENT_URL");
    const std::string base = url != nullptr && *url != '\0' ? url : "http://127.0.0.1:15672";
    const auto [status, output] =
        run_command({"/usr/bin/curl", "-fsS", "-u", "guest:guest", "-H", "content-type: application/json", "-d", json,
                     base + "/api/exchanges/%2F/conveyor.jobs/publish"},
                    30s);
    ASSERT_EQ(status, 0) << output;
    ASSERT_NE(output.find(R"("routed":true)"), std::string::npos) << output;
}

amqp::Message job_with_body(const std::string& body, const std::string& id, const std::string& type = "diag.noop") {
    return Broker::job(type, body, id);
}

struct BadInput {
    std::string name;
    std::function<void(Broker&)> publish;
    /// The dead-letter reason; empty when the job must run (it is a diag.ledger job, so it leaves a ledger row).
    std::string reason;
    /// The message_id the dead letter carries; empty when the message had none.
    std::string id;
};

// ctest names the cases; gtest would otherwise print the struct's bytes.
void PrintTo(const BadInput& input, std::ostream* out) {
    *out << input.name;
}

std::string nested(int depth) {
    return R"({"deep": )" + std::string(static_cast<std::size_t>(depth), '[') +
           std::string(static_cast<std::size_t>(depth), ']') + "}";
}

std::vector<BadInput> bad_inputs() {
    return {
        {"NotJson", [](Broker& b) { b.publish(job_with_body("this is not json", "NotJson")); }, "bad_json", "NotJson"},
        {"InvalidUtf8", [](Broker& b) { b.publish(job_with_body("{\"name\": \"caf\xC3\x28\"}", "InvalidUtf8")); },
         "bad_json", "InvalidUtf8"},
        {"JsonArray", [](Broker& b) { b.publish(job_with_body("[1, 2, 3]", "JsonArray")); }, "invalid_payload",
         "JsonArray"},
        {"JsonNumber", [](Broker& b) { b.publish(job_with_body("42", "JsonNumber")); }, "invalid_payload",
         "JsonNumber"},
        {"JsonString", [](Broker& b) { b.publish(job_with_body(R"("hello")", "JsonString")); }, "invalid_payload",
         "JsonString"},
        {"JsonNull", [](Broker& b) { b.publish(job_with_body("null", "JsonNull")); }, "invalid_payload", "JsonNull"},
        {"TruncatedJson", [](Broker& b) { b.publish(job_with_body(R"({"ms": 1)", "TruncatedJson")); }, "bad_json",
         "TruncatedJson"},
        {"TenThousandLevelsDeep", [](Broker& b) { b.publish(job_with_body(nested(10'000), "TenThousandLevelsDeep")); },
         "bad_json", "TenThousandLevelsDeep"},
        {"ThirtyThreeLevelsDeep",
         [](Broker& b) { b.publish(job_with_body(nested(32), "ThirtyThreeLevelsDeep", "diag.ledger")); }, "too_large",
         "ThirtyThreeLevelsDeep"},
        {"ThirtyTwoLevelsDeepRuns",
         [](Broker& b) { b.publish(job_with_body(nested(31), "ThirtyTwoLevelsDeepRuns", "diag.ledger")); }, "",
         "ThirtyTwoLevelsDeepRuns"},
        // Validated on one value and run with another, a repeated key would slip past the job's schema.
        {"RepeatedKey",
         [](Broker& b) { b.publish(job_with_body(R"({"ms": 1, "ms": "soon"})", "RepeatedKey", "diag.sleep")); },
         "bad_json", "RepeatedKey"},
        {"RepeatedKeyUnderAnEscape",
         [](Broker& b) {
             b.publish(job_with_body(R"({"emit": {"a": 1, "\u0061": 2}})", "RepeatedKeyUnderAnEscape", "diag.ledger"));
         },
         "bad_json", "RepeatedKeyUnderAnEscape"},
        {"OverTheSizeLimit",
         [](Broker& b) {
             b.publish(job_with_body(R"({"pad": ")" + std::string(100'000, 'x') + R"("})", "OverTheSizeLimit"));
         },
         "too_large", "OverTheSizeLimit"},
        {"EmptyBody", [](Broker& b) { b.publish(job_with_body("", "EmptyBody")); }, "bad_json", "EmptyBody"},
        {"MissingMessageId",
         [](Broker& b) {
             auto message = job_with_body("{}", "x");
             message.properties.message_id.clear();
             b.publish(std::move(message));
         },
         "invalid_envelope", ""},
        {"MessageIdOver128Bytes", [](Broker& b) { b.publish(job_with_body("{}", std::string(200, 'i'))); },
         "invalid_envelope", std::string(200, 'i')},
        {"NoJobTypeSentStraightToTheQueue",
         [](Broker& b) {
             auto message = job_with_body("{}", "NoJobTypeSentStraightToTheQueue");
             message.exchange.clear();
             message.routing_key = "conveyor.diag";
             b.publish(std::move(message));
         },
         "unknown_type", "NoJobTypeSentStraightToTheQueue"},
        {"UnknownJobType", [](Broker& b) { b.publish(job_with_body("{}", "UnknownJobType", "diag.nosuchjob")); },
         "unknown_type", "UnknownJobType"},
        {"WrongContentType",
         [](Broker& b) {
             auto message = job_with_body("{}", "WrongContentType");
             message.properties.content_type = "text/plain";
             b.publish(std::move(message));
         },
         "invalid_envelope", "WrongContentType"},
        {"HeadersOfUnexpectedTypesAreIgnored",
         [](Broker&) {
             publish_raw(R"({"routing_key": "diag.ledger", "payload": "{}", "payload_encoding": "string",
                 "properties": {"message_id": "HeadersOfUnexpectedTypesAreIgnored", "content_type": "application/json",
                 "headers": {"x-conveyor-attempt": "two", "x-conveyor-enqueued-at": "yesterday",
                             "traceparent": {"nested": "table"}, "list": [1, 2, 3], "flag": true}}})");
         },
         "", "HeadersOfUnexpectedTypesAreIgnored"},
        {"HugeHeaderValueOnAGoodJob",
         [](Broker& b) {
             auto message = job_with_body("{}", "HugeHeaderValueOnAGoodJob", "diag.ledger");
             amqp::set_header(message.properties.headers, "x-note", std::string(60'000, 'h'));
             b.publish(std::move(message));
         },
         "", "HugeHeaderValueOnAGoodJob"},
        {"HugeHeaderValueOnABadJobIsKept",
         [](Broker& b) {
             auto message = job_with_body("not json", "HugeHeaderValueOnABadJobIsKept");
             amqp::set_header(message.properties.headers, "x-note", std::string(60'000, 'h'));
             b.publish(std::move(message));
         },
         "bad_json", "HugeHeaderValueOnABadJobIsKept"},
        {"SleepMsOfTheWrongType",
         [](Broker& b) { b.publish(job_with_body(R"({"ms": "soon"})", "SleepMsOfTheWrongType", "diag.sleep")); },
         "invalid_payload", "SleepMsOfTheWrongType"},
        {"SleepMsNegative",
         [](Broker& b) { b.publish(job_with_body(R"({"ms": -5})", "SleepMsNegative", "diag.sleep")); },
         "invalid_payload", "SleepMsNegative"},
        {"SleepMsOutOfRange",
         [](Broker& b) { b.publish(job_with_body(R"({"ms": 99999999999})", "SleepMsOutOfRange", "diag.sleep")); },
         "invalid_payload", "SleepMsOutOfRange"},
        {"FailTimesOfTheWrongType",
         [](Broker& b) { b.publish(job_with_body(R"({"times": "three"})", "FailTimesOfTheWrongType", "diag.fail")); },
         "invalid_payload", "FailTimesOfTheWrongType"},
        {"FailPermanentNotABoolean",
         [](Broker& b) {
             b.publish(job_with_body(R"({"permanent": "yes"})", "FailPermanentNotABoolean", "diag.fail"));
         },
         "invalid_payload", "FailPermanentNotABoolean"},
        {"LedgerEmitsOutOfRange",
         [](Broker& b) { b.publish(job_with_body(R"({"emit": 1000})", "LedgerEmitsOutOfRange", "diag.ledger")); },
         "invalid_payload", "LedgerEmitsOutOfRange"},
        {"CrashJobWhileCrashJobsAreDisabled",
         [](Broker& b) { b.publish(job_with_body("{}", "CrashJobWhileCrashJobsAreDisabled", "diag.crash")); },
         "permanent_failure", "CrashJobWhileCrashJobsAreDisabled"},
        {"AttemptHeaderBeyondThePolicy",
         [](Broker& b) {
             auto message = job_with_body(R"({"times": 10000000000})", "AttemptHeaderBeyondThePolicy", "diag.fail");
             amqp::set_header(message.properties.headers, "x-conveyor-attempt", std::int64_t{1'000'000'000'000});
             b.publish(std::move(message));
         },
         "attempts_exhausted", "AttemptHeaderBeyondThePolicy"},
        {"UnknownPayloadFieldsAreIgnored",
         [](Broker& b) {
             b.publish(job_with_body(R"({"unexpected": {"a": [1]}})", "UnknownPayloadFieldsAreIgnored", "diag.ledger"));
         },
         "", "UnknownPayloadFieldsAreIgnored"},
    };
}

class BadInputTest : public WorkerTest, public ::testing::WithParamInterface<BadInput> {};

TEST_P(BadInputTest, IsDeadLetteredWithItsReasonOrHandledAndTheWorkerGoesOn) {
    const auto& input = GetParam();
    auto worker = start_worker({"--max-message-bytes", "65536"}, "bad-input-" + input.name);
    input.publish(broker_);
    if (input.reason.empty()) {
        EXPECT_TRUE(eventually(
            [&] {
                return database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE job_id = $1", {input.id}) == 1;
            },
            20s))
            << worker.process->log();
        EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
    } else {
        const auto dead = broker_.take("conveyor.diag.dlq", 1, 20s);
        ASSERT_EQ(dead.size(), 1U) << worker.process->log();
        const auto& letter = dead[0];
        EXPECT_EQ(header_text(letter, "x-conveyor-reason"), input.reason) << header_text(letter, "x-conveyor-error");
        EXPECT_EQ(letter.message.properties.message_id, input.id);
        const auto error = header_text(letter, "x-conveyor-error");
        EXPECT_FALSE(error.empty());
        EXPECT_LE(error.size(), 1024U + 3) << "x-conveyor-error is bounded";
        EXPECT_FALSE(header_text(letter, "x-conveyor-failed-at").empty());
        EXPECT_FALSE(header_text(letter, "x-conveyor-worker").empty());
        EXPECT_FALSE(header_text(letter, "x-conveyor-attempts").empty());
        EXPECT_FALSE(header_text(letter, "x-conveyor-original-routing-key").empty());
        if (input.name == "HugeHeaderValueOnABadJobIsKept") {
            EXPECT_EQ(header_text(letter, "x-note").size(), 60'000U) << "the original headers are kept";
        }
    }
    // The worker neither crashed nor stalled: the next job runs.
    broker_.publish(Broker::job("diag.ledger", "{}", "after-" + input.name));
    EXPECT_TRUE(eventually(
        [&] {
            return database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE job_id = $1",
                                    {"after-" + input.name}) == 1;
        },
        20s))
        << worker.process->log();
    EXPECT_TRUE(worker.process->running());
}

INSTANTIATE_TEST_SUITE_P(Messages, BadInputTest, ::testing::ValuesIn(bad_inputs()),
                         [](const ::testing::TestParamInfo<BadInput>& case_info) { return case_info.param.name; });

TEST_F(WorkerTest, AJobTypeNoQueueIsBoundForIsRefusedToItsPublisher) {
    EXPECT_THROW(broker_.publish(Broker::job("billing.charge", "{}", "nowhere")), std::runtime_error);
}

TEST_F(WorkerTest, DuplicateMessageIdsOfAJobWithoutTheInboxBothRun) {
    auto worker = start_worker({}, "duplicate-noop");
    broker_.publish(Broker::job("diag.noop", "{}", "twice"));
    broker_.publish(Broker::job("diag.noop", "{}", "twice"));
    // At-least-once, as documented: only transactional job types (the inbox) turn a duplicate into a no-op.
    EXPECT_TRUE(eventually([&] { return worker.succeeded() == 2; }, 20s)) << worker.process->log();
    EXPECT_EQ(worker.metric("conveyor_jobs_completed_total", {"outcome=\"duplicate\""}), 0);
}

}  // namespace
}  // namespace conveyor::testing
