#include <gtest/gtest.h>

#include "admit.hpp"

namespace conveyor::worker {
namespace {

boost::asio::awaitable<Outcome> succeed(JobContext&) {
    co_return Success{};
}

amqp::Message job(std::string body, std::string type = "diag.sleep") {
    amqp::Message message;
    message.routing_key = std::move(type);
    message.body = std::move(body);
    message.properties.message_id = "job-1";
    return message;
}

class AdmitScreen : public ::testing::Test {
  protected:
    AdmitScreen() {
        JobOptions options;
        options.validate = [](simdjson::dom::element payload) -> std::optional<std::string> {
            if (payload["ms"].get_int64().error()) {
                return "ms: expected an integer";
            }
            return std::nullopt;
        };
        registry_.add("diag.sleep", succeed, options);
    }
    std::variant<Screened, Refusal> screen(const amqp::Message& message) {
        return worker::screen(message, limits_, parser_, registry_);
    }

    JobRegistry registry_;
    EnvelopeLimits limits_{.max_body_bytes = 256};
    simdjson::dom::parser parser_;
};

TEST_F(AdmitScreen, AReadableJobWithAHandlerAndAValidPayloadPasses) {
    auto screened = screen(job(R"({"ms": 5})"));
    ASSERT_TRUE(std::holds_alternative<Screened>(screened));
    EXPECT_EQ(std::get<Screened>(screened).envelope.job_id, "job-1");
    EXPECT_EQ(std::get<Screened>(screened).definition, registry_.find("diag.sleep"));
}

TEST_F(AdmitScreen, AMessageThatIsNotJsonIsRefusedUnderTheUnknownType) {
    auto screened = screen(job("{not json"));
    ASSERT_TRUE(std::holds_alternative<Refusal>(screened));
    const auto& refusal = std::get<Refusal>(screened);
    EXPECT_EQ(refusal.verdict.reason, "bad_json");
    EXPECT_EQ(refusal.type, "unknown");
    EXPECT_EQ(refusal.attempts, 0U);
    EXPECT_FALSE(refusal.clear_record);
}

TEST_F(AdmitScreen, ATypeWithNoHandlerIsRefusedAsUnknownType) {
    auto screened = screen(job("{}", "diag.nothing"));
    ASSERT_TRUE(std::holds_alternative<Refusal>(screened));
    const auto& refusal = std::get<Refusal>(screened);
    EXPECT_EQ(refusal.verdict.reason, "unknown_type");
    EXPECT_EQ(refusal.verdict.error, "no handler for job type 'diag.nothing'");
    EXPECT_EQ(refusal.type, "diag.nothing");
    EXPECT_EQ(refusal.attempts, 1U);
}

TEST_F(AdmitScreen, APayloadItsValidatorRefusesIsAnInvalidPayload) {
    auto message = job(R"({"ms": "soon"})");
    amqp::set_header(message.properties.headers, "x-conveyor-attempt", std::int64_t{4});
    auto screened = screen(message);
    ASSERT_TRUE(std::holds_alternative<Refusal>(screened));
    const auto& refusal = std::get<Refusal>(screened);
    EXPECT_EQ(refusal.verdict.reason, "invalid_payload");
    EXPECT_EQ(refusal.verdict.error, "ms: expected an integer");
    EXPECT_EQ(refusal.attempts, 4U);
}

TEST_F(AdmitScreen, AnOversizedBodyIsRefusedBeforeItIsParsed) {
    auto screened = screen(job(std::string(300, ' ') + "{}"));
    ASSERT_TRUE(std::holds_alternative<Refusal>(screened));
    EXPECT_EQ(std::get<Refusal>(screened).verdict.reason, "too_large");
}

}  // namespace
}  // namespace conveyor::worker
