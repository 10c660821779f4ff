#include "conveyor/core/envelope.hpp"

#include <gtest/gtest.h>

#include "conveyor/core/json.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor {
namespace {

amqp::Message job(std::string body, std::string routing_key = "diag.noop", std::string id = "job-1") {
    amqp::Message message;
    message.routing_key = std::move(routing_key);
    message.body = std::move(body);
    message.properties.message_id = std::move(id);
    return message;
}

class EnvelopeTest : public ::testing::Test {
  protected:
    boost::system::result<Envelope, EnvelopeError> parse(const amqp::Message& message) {
        return parse_envelope(message, limits_, parser_);
    }
    EnvelopeErrc error_of(const amqp::Message& message) {
        auto result = parse(message);
        EXPECT_FALSE(result.has_value());
        return result.has_value() ? EnvelopeErrc::invalid_envelope : result.error().errc;
    }

    EnvelopeLimits limits_{.max_body_bytes = 64};
    simdjson::dom::parser parser_;
};

TEST_F(EnvelopeTest, ParsesAValidJob) {
    auto message = job(R"({"ms": 5})", "diag.sleep", "abc");
    message.properties.correlation_id = "order-7";
    amqp::set_header(message.properties.headers, "traceparent",
                     std::string("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    amqp::set_header(message.properties.headers, "x-conveyor-enqueued-at", std::int64_t{1'700'000'000'123});
    auto envelope = parse(message);
    ASSERT_TRUE(envelope.has_value()) << envelope.error().detail;
    EXPECT_EQ(envelope->job_id, "abc");
    EXPECT_EQ(envelope->type, "diag.sleep");
    EXPECT_EQ(envelope->family, "diag");
    EXPECT_EQ(envelope->correlation_id, "order-7");
    EXPECT_EQ(envelope->traceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    ASSERT_TRUE(envelope->enqueued_at.has_value());
    EXPECT_EQ(std::chrono::duration_cast<std::chrono::milliseconds>(envelope->enqueued_at->time_since_epoch()).count(),
              1'700'000'000'123);
    EXPECT_EQ(envelope->attempt, 1U);
    int64_t ms = 0;
    EXPECT_EQ(envelope->payload["ms"].get(ms), simdjson::SUCCESS);
    EXPECT_EQ(ms, 5);
}

TEST_F(EnvelopeTest, FallsBackToTheAmqpTimestampInSeconds) {
    auto message = job("{}");
    message.properties.timestamp = 1'700'000'000;
    auto envelope = parse(message);
    ASSERT_TRUE(envelope.has_value());
    EXPECT_EQ(std::chrono::duration_cast<std::chrono::seconds>(envelope->enqueued_at->time_since_epoch()).count(),
              1'700'000'000);
}

TEST_F(EnvelopeTest, ReadsTheAttemptHeader) {
    auto message = job("{}");
    amqp::set_header(message.properties.headers, "x-conveyor-attempt", std::int64_t{3});
    EXPECT_EQ(parse(message)->attempt, 3U);
}

TEST_F(EnvelopeTest, ReadsAUniqueKeyAndItsWindowAsNumberOrText) {
    auto message = job("{}");
    amqp::set_header(message.properties.headers, "x-conveyor-unique-key", std::string("customer-7:invoice"));
    amqp::set_header(message.properties.headers, "x-conveyor-unique-for", std::int64_t{3600});
    auto envelope = parse(message);
    ASSERT_TRUE(envelope.has_value());
    EXPECT_EQ(envelope->unique_key, "customer-7:invoice");
    EXPECT_EQ(envelope->unique_for, std::chrono::seconds(3600));
    amqp::set_header(message.properties.headers, "x-conveyor-unique-for", std::string("60"));
    EXPECT_EQ(parse(message)->unique_for, std::chrono::seconds(60));
    EXPECT_TRUE(parse(job("{}"))->unique_key.empty()) << "a job without the header is not unique";
}

TEST_F(EnvelopeTest, RefusesAUniqueKeyOrWindowItCannotHoldSayingWhich) {
    const auto refusal = [&](std::vector<std::pair<std::string, amqp::FieldValue>> headers) {
        auto message = job("{}");
        for (auto& [name, value] : headers) {
            amqp::set_header(message.properties.headers, name, std::move(value));
        }
        auto result = parse(message);
        EXPECT_FALSE(result.has_value());
        return result.has_value() ? EnvelopeError{} : result.error();
    };
    const std::string key = "x-conveyor-unique-key";
    const std::string window = "x-conveyor-unique-for";
    for (const auto& bad : std::vector<amqp::FieldValue>{std::string(), std::string(256, 'k'), std::int64_t{7},
                                                         std::string("a\0b", 3), std::string("\xff\xfe")}) {
        const auto error = refusal({{key, bad}});
        EXPECT_EQ(error.errc, EnvelopeErrc::invalid_envelope);
        EXPECT_NE(error.detail.find("x-conveyor-unique-key must be UTF-8 text of 1 to 255 bytes"), std::string::npos)
            << error.detail;
    }
    for (const auto& bad : std::vector<amqp::FieldValue>{std::int64_t{-1}, std::int64_t{315'360'001}, std::string("1h"),
                                                         std::string(""), 2.5}) {
        const auto error = refusal({{key, std::string("k")}, {window, bad}});
        EXPECT_NE(error.detail.find("x-conveyor-unique-for must be whole seconds from 0 to 315360000"),
                  std::string::npos)
            << error.detail;
    }
    EXPECT_EQ(refusal({{window, std::int64_t{60}}}).detail, "x-conveyor-unique-for needs x-conveyor-unique-key");
}

TEST_F(EnvelopeTest, ReadsTheBatchAJobIsAMemberOfAndRefusesOneItCannotRecord) {
    auto message = job("{}");
    EXPECT_TRUE(parse(message)->batch.empty()) << "a job without the header is of no batch";
    amqp::set_header(message.properties.headers, "x-conveyor-batch", std::string("import-7"));
    EXPECT_EQ(parse(message)->batch, "import-7");
    for (const auto& bad : std::vector<amqp::FieldValue>{std::string(), std::string(129, 'b'), std::int64_t{7},
                                                         std::string("a\0b", 3), std::string("\xff\xfe")}) {
        amqp::set_header(message.properties.headers, "x-conveyor-batch", bad);
        auto result = parse(message);
        ASSERT_FALSE(result.has_value());
        EXPECT_EQ(result.error().errc, EnvelopeErrc::invalid_envelope);
        EXPECT_EQ(result.error().detail, "x-conveyor-batch must be UTF-8 text of 1 to 128 bytes without U+0000");
    }
}

TEST_F(EnvelopeTest, RejectsABodyOverTheLimit) {
    EXPECT_EQ(error_of(job(R"({"pad": ")" + std::string(100, 'x') + R"("})")), EnvelopeErrc::too_large);
}

TEST_F(EnvelopeTest, RejectsInvalidJson) {
    EXPECT_EQ(error_of(job("not json")), EnvelopeErrc::bad_json);
    EXPECT_EQ(error_of(job(R"({"a": )")), EnvelopeErrc::bad_json);
    EXPECT_EQ(error_of(job("")), EnvelopeErrc::bad_json);
}

TEST_F(EnvelopeTest, RejectsJsonThatIsNotAnObject) {
    EXPECT_EQ(error_of(job("[1, 2]")), EnvelopeErrc::invalid_payload);
    EXPECT_EQ(error_of(job("42")), EnvelopeErrc::invalid_payload);
}

TEST_F(EnvelopeTest, RejectsRepeatedKeysAsBadJsonAndDeepNestingAsTooLarge) {
    // Validated on one value and acted on with another, a repeated key would slip past the job's schema.
    EXPECT_EQ(error_of(job(R"({"ms":1,"ms":"x"})", "diag.sleep")), EnvelopeErrc::bad_json);
    EXPECT_EQ(error_of(job(R"({"a":{"b":1,"\u0062":2}})")), EnvelopeErrc::bad_json);
    limits_.max_body_bytes = 4096;
    std::string deep = R"({"a":)";
    for (std::size_t level = 2; level <= json::kMaxDepth; ++level) {
        deep += "[";
    }
    const auto closing = std::string(json::kMaxDepth - 1, ']');
    EXPECT_TRUE(parse(job(deep + "1" + closing + "}")).has_value()) << "exactly json::kMaxDepth levels";
    EXPECT_EQ(error_of(job(deep + "[1]" + closing + "}")), EnvelopeErrc::too_large);
    EXPECT_TRUE(parse(job(R"({"text":"a\u0000b"})")).has_value()) << "U+0000 is valid JSON on the wire";
}

TEST_F(EnvelopeTest, IgnoresEnqueueTimesSystemClockCannotHold) {
    // Found by tests/fuzz: a time past 2262 overflowed system_clock's nanoseconds.
    auto message = job("{}");
    amqp::set_header(message.properties.headers, "x-conveyor-enqueued-at", std::int64_t{9'000'000'000'000'000});
    message.properties.timestamp = std::uint64_t{1} << 62;
    auto envelope = parse(message);
    ASSERT_TRUE(envelope.has_value());
    EXPECT_FALSE(envelope->enqueued_at.has_value());
    amqp::set_header(message.properties.headers, "x-conveyor-enqueued-at", std::int64_t{-5});
    message.properties.timestamp = 1'700'000'000;
    envelope = parse(message);
    ASSERT_TRUE(envelope->enqueued_at.has_value());
    EXPECT_EQ(envelope->enqueued_at->time_since_epoch(), std::chrono::seconds(1'700'000'000));
}

TEST_F(EnvelopeTest, RequiresAJobIdOfBoundedLength) {
    EXPECT_EQ(error_of(job("{}", "diag.noop", "")), EnvelopeErrc::invalid_envelope);
    EXPECT_EQ(error_of(job("{}", "diag.noop", std::string(129, 'i'))), EnvelopeErrc::invalid_envelope);
    EXPECT_TRUE(parse(job("{}", "diag.noop", std::string(128, 'i'))).has_value());
}

TEST_F(EnvelopeTest, RequiresAJobTypeRoutingKey) {
    for (const char* bad : {"", "diag", ".noop", "diag.", "Diag.noop", "diag..noop", "diag.no op"}) {
        EXPECT_EQ(error_of(job("{}", bad)), EnvelopeErrc::unknown_type) << bad;
    }
    EXPECT_TRUE(parse(job("{}", "orders.place_v2")).has_value());
}

TEST_F(EnvelopeTest, AcceptsJsonOrNoContentTypeAndRefusesOthers) {
    auto message = job("{}");
    for (const auto* accepted : {"", "application/json", "application/json; charset=utf-8", "Application/JSON"}) {
        message.properties.content_type = accepted;
        EXPECT_TRUE(parse(message).has_value()) << accepted;
    }
    for (const auto* refused : {"text/plain", "application/x-protobuf", "application/jsonx"}) {
        message.properties.content_type = refused;
        EXPECT_EQ(error_of(message), EnvelopeErrc::invalid_envelope) << refused;
    }
}

TEST_F(EnvelopeTest, RejectsBodiesSimdjsonCannotTrust) {
    EXPECT_EQ(error_of(job("")), EnvelopeErrc::bad_json);
    EXPECT_EQ(error_of(job("{\"a\": \"\xC3\x28\"}")), EnvelopeErrc::bad_json);
    limits_.max_body_bytes = 1 << 20;
    const std::string deep = "{\"a\": " + std::string(10'000, '[') + std::string(10'000, ']') + "}";
    EXPECT_EQ(error_of(job(deep)), EnvelopeErrc::bad_json);
}

TEST_F(EnvelopeTest, TakesTheJobTypeFromBehindTheDelayLaddersPrefix) {
    auto message = job("{}", topology::delay_routing_key(std::chrono::seconds(3), "diag.fail"));
    auto envelope = parse(message);
    ASSERT_TRUE(envelope.has_value()) << envelope.error().detail;
    EXPECT_EQ(envelope->type, "diag.fail");
    EXPECT_EQ(envelope->family, "diag");
}

TEST_F(EnvelopeTest, IgnoresHeadersOfTheWrongType) {
    auto message = job("{}");
    amqp::set_header(message.properties.headers, "x-conveyor-attempt", std::string("two"));
    amqp::set_header(message.properties.headers, "x-conveyor-enqueued-at", true);
    amqp::set_header(message.properties.headers, "traceparent", std::int64_t{7});
    auto envelope = parse(message);
    ASSERT_TRUE(envelope.has_value());
    EXPECT_EQ(envelope->attempt, 1U);
    EXPECT_FALSE(envelope->enqueued_at.has_value());
    EXPECT_TRUE(envelope->traceparent.empty());
}

TEST_F(EnvelopeTest, ErrorsNameTheirDeadLetterReason) {
    EXPECT_EQ(reason_code(EnvelopeErrc::too_large), "too_large");
    EXPECT_EQ(reason_code(EnvelopeErrc::bad_json), "bad_json");
    EXPECT_EQ(reason_code(EnvelopeErrc::invalid_payload), "invalid_payload");
    EXPECT_EQ(reason_code(EnvelopeErrc::invalid_envelope), "invalid_envelope");
    EXPECT_THROW((void)parse(job("nope")).value(), InvalidEnvelope);
}

TEST_F(EnvelopeTest, ParsesInPlaceWhenTheBodyHasPadding) {
    auto message = job(R"({"k": "v"})");
    message.body.reserve(message.body.size() + simdjson::SIMDJSON_PADDING);
    EXPECT_TRUE(parse(message).has_value());
}

}  // namespace
}  // namespace conveyor
