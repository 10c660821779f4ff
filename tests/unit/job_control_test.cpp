#include "conveyor/core/job_control.hpp"

#include <gtest/gtest.h>

namespace conveyor::job_control {
namespace {

TEST(JobControl, ACancelCommandReadsBackAsItWasWritten) {
    const auto body = encode({"cancel", "order-7/2"});
    EXPECT_EQ(body, R"({"command":"cancel","job_id":"order-7/2"})");
    const auto command = decode(body);
    ASSERT_TRUE(command.has_value());
    EXPECT_EQ(command->command, "cancel");
    EXPECT_EQ(command->job_id, "order-7/2");
}

TEST(JobControl, WhatIsNotACommandIsIgnored) {
    for (const std::string_view body :
         {"", "cancel order-7", "[]", R"({"command":"cancel"})", R"({"command":"cancel","job_id":""})",
          R"({"command":"cancel","job_id":7})", R"({"command":"explode","job_id":"order-7"})"}) {
        EXPECT_FALSE(decode(body).has_value()) << body;
    }
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
