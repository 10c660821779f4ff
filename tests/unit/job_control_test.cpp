#include "conveyor/admin/job_control.hpp"

#include <gtest/gtest.h>

#include <boost/json/serialize.hpp>

namespace conveyor::job_control {
namespace {

TEST(JobControl, ACancelCommandReadsBackAsItWasWritten) {
    const auto body = encode(Cancel{"order-7/2"});
    EXPECT_EQ(body, R"({"command":"cancel","job_id":"order-7/2"})");
    const auto command = decode(body);
    ASSERT_TRUE(command.has_value());
    ASSERT_TRUE(std::holds_alternative<Cancel>(*command));
    EXPECT_EQ(std::get<Cancel>(*command).job_id, "order-7/2");
}

TEST(JobControl, PauseAndResumeCommandsReadBackWithTheirTargetAndVersion) {
    for (const auto& sent :
         {PauseState{"emails", "", true, 41, {}, {}}, PauseState{"diag", "diag.sleep", false, 42, {}, {}}}) {
        const auto body = encode(sent);
        const auto command = decode(body);
        ASSERT_TRUE(command.has_value()) << body;
        ASSERT_TRUE(std::holds_alternative<PauseState>(*command)) << body;
        const auto& received = std::get<PauseState>(*command);
        EXPECT_EQ(received.family, sent.family);
        EXPECT_EQ(received.job_type, sent.job_type);
        EXPECT_EQ(received.paused, sent.paused);
        EXPECT_EQ(received.version, sent.version);
    }
    EXPECT_EQ(encode(PauseState{"emails", "", true, 41, {}, {}}),
              R"({"command":"pause","family":"emails","type":"","version":41})");
    const auto without_type = decode(R"({"command":"resume","family":"orders","version":3})");
    ASSERT_TRUE(without_type.has_value());
    EXPECT_EQ(std::get<PauseState>(*without_type).job_type, "");
}

TEST(JobControl, APauseTargetIsAKnownFamilyOrOneOfItsTypes) {
    EXPECT_NO_THROW(check_pause_target("emails", ""));
    EXPECT_NO_THROW(check_pause_target("emails", "emails.send"));
    for (const auto& [family, type] :
         std::initializer_list<std::pair<std::string_view, std::string_view>>{{"mail", ""},
                                                                              {"", ""},
                                                                              {"emails", "orders.place"},
                                                                              {"emails", "emails"},
                                                                              {"emails", "emails."},
                                                                              {"emails", "emailsx.send"},
                                                                              {"emails", "emails.se nd"}}) {
        EXPECT_THROW(check_pause_target(family, type), std::invalid_argument) << family << " / " << type;
    }
}

TEST(JobControl, WhatIsNotACommandIsIgnored) {
    for (const std::string_view body :
         {"", "cancel order-7", "[]", R"({"command":"cancel"})", R"({"command":"cancel","job_id":""})",
          R"({"command":"cancel","job_id":7})", R"({"command":"explode","job_id":"order-7"})",
          R"({"command":"pause","family":"emails"})", R"({"command":"pause","family":"mail","version":1})",
          R"({"command":"pause","family":"emails","type":"orders.place","version":1})",
          R"({"command":"resume","family":"emails","type":7,"version":1})"}) {
        EXPECT_FALSE(decode(body).has_value()) << body;
    }
}

TEST(JobControl, AFamilysPauseIsItsOwnPausedStateAndItsTypesPausedOnTheirOwn) {
    const std::vector<PauseState> states{{"diag", "", false, 1, {}, {}},
                                         {"diag", "diag.sleep", true, 2, {}, {}},
                                         {"diag", "diag.fail", false, 3, {}, {}},
                                         {"emails", "", true, 4, "2026-12-05T08:00:00.000Z", "ops"}};
    const auto diag = family_pause(states, "diag");
    EXPECT_FALSE(diag.whole.has_value());
    EXPECT_EQ(diag.types, std::vector<std::string>{"diag.sleep"});
    EXPECT_EQ(boost::json::serialize(to_json(diag)), R"({"paused":false,"paused_types":["diag.sleep"]})");
    const auto emails = family_pause(states, "emails");
    ASSERT_TRUE(emails.whole.has_value());
    EXPECT_EQ(emails.whole->changed_by, "ops");
    EXPECT_TRUE(emails.types.empty());
    EXPECT_FALSE(family_pause(states, "orders").whole.has_value());
}

TEST(JobControl, ResultsHaveTheNamesTheApiAnswersWith) {
    using Result = CancelOutcome::Result;
    EXPECT_EQ(name(Result::cancelled), "cancelled");
    EXPECT_EQ(name(Result::cancelling), "cancelling");
    EXPECT_EQ(name(Result::cancel_pending), "cancel_pending");
    EXPECT_EQ(name(Result::terminal), "terminal");
}

}  // namespace
}  // namespace conveyor::job_control
