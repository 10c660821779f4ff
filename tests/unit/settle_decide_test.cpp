#include <gtest/gtest.h>

#include "settle.hpp"

namespace conveyor::worker {
namespace {

using std::chrono::milliseconds;

RetryPolicy three_attempts() {
    RetryPolicy policy;
    policy.max_attempts = 3;
    policy.base_delay = milliseconds(1000);
    policy.max_delay = milliseconds(60'000);
    return policy;
}

Attempt ended_with(Outcome outcome) {
    Attempt attempt;
    attempt.outcome = std::move(outcome);
    return attempt;
}

TEST(SettleDecide, ASuccessIsAcknowledged) {
    EXPECT_TRUE(std::holds_alternative<decision::Acknowledge>(decide(ended_with(Success{}), 1, three_attempts(), 0.5)));
}

TEST(SettleDecide, ADuplicateIsAcknowledgedWhateverItsOutcome) {
    auto attempt = ended_with(Retry{milliseconds(0), "would have failed"});
    attempt.duplicate = true;
    EXPECT_TRUE(std::holds_alternative<decision::Acknowledge>(decide(attempt, 3, three_attempts(), 0.5)));
}

TEST(SettleDecide, ARetryBeforeTheLastAttemptWaitsAtLeastWhatTheHandlerAsked) {
    const auto policy = three_attempts();
    const auto decided = decide(ended_with(Retry{milliseconds(5000), "gateway busy"}), 2, policy, 0.1);
    const auto* retry = std::get_if<decision::RetryLater>(&decided);
    ASSERT_NE(retry, nullptr);
    EXPECT_TRUE(retry->counts_attempt);
    EXPECT_EQ(retry->reason, "gateway busy");
    EXPECT_EQ(retry->delay, policy.delay_after(2, milliseconds(5000), 0.1));
    EXPECT_GE(retry->delay, milliseconds(5000));
}

TEST(SettleDecide, TheLastFailedAttemptGivesUpAsAttemptsExhausted) {
    const auto decided = decide(ended_with(Retry{milliseconds(0), "smtp 451"}), 3, three_attempts(), 0.5);
    const auto* gave_up = std::get_if<decision::GiveUp>(&decided);
    ASSERT_NE(gave_up, nullptr);
    EXPECT_EQ(gave_up->verdict.reason, "attempts_exhausted");
    EXPECT_EQ(gave_up->verdict.error, "attempt 3 of 3 failed: smtp 451");
}

TEST(SettleDecide, TheLastAttemptRunningOutOfTimeGivesUpAsTimeout) {
    auto attempt = ended_with(Retry{milliseconds(0), "timed out after 30000 ms"});
    attempt.timed_out = true;
    const auto decided = decide(attempt, 3, three_attempts(), 0.5);
    ASSERT_TRUE(std::holds_alternative<decision::GiveUp>(decided));
    EXPECT_EQ(std::get<decision::GiveUp>(decided).verdict.reason, "timeout");
}

TEST(SettleDecide, AWaitThatDoesNotCountNeverGivesUp) {
    const auto policy = three_attempts();
    const auto decided = decide(ended_with(Retry{milliseconds(200), "circuit open", false}), 50, policy, 0.0);
    const auto* retry = std::get_if<decision::RetryLater>(&decided);
    ASSERT_NE(retry, nullptr);
    EXPECT_FALSE(retry->counts_attempt);
    EXPECT_EQ(retry->delay, milliseconds(200));
    const auto longer = decide(ended_with(Retry{milliseconds(0), "circuit open", false}), 50, policy, 0.99);
    EXPECT_EQ(std::get<decision::RetryLater>(longer).delay, policy.delay_after(1, {}, 0.99));
}

TEST(SettleDecide, ADeadLetterKeepsItsReasonAndAnEmptyOneIsAPermanentFailure) {
    const auto named = decide(ended_with(DeadLetter{"card_declined", "insufficient funds"}), 1, three_attempts(), 0.5);
    EXPECT_EQ(std::get<decision::GiveUp>(named).verdict.reason, "card_declined");
    EXPECT_EQ(std::get<decision::GiveUp>(named).verdict.error, "insufficient funds");
    const auto unnamed = decide(ended_with(DeadLetter{"", "bad state"}), 1, three_attempts(), 0.5);
    EXPECT_EQ(std::get<decision::GiveUp>(unnamed).verdict.reason, "permanent_failure");
}

}  // namespace
}  // namespace conveyor::worker
