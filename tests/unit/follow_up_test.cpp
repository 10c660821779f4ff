#include <gtest/gtest.h>

#include "conveyor/core/job.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor {
namespace {

using namespace std::chrono_literals;

/// A job as a handler sees it, with a transaction opener that is never called: emit() only needs one to exist.
class FollowUpTest : public ::testing::Test {
  protected:
    FollowUpTest() {
        envelope_.job_id = "job-7";
        envelope_.type = "payments.charge";
        envelope_.family = "payments";
        envelope_.correlation_id = "flow-1";
        envelope_.payload = parser_.parse(std::string_view(R"({"order_id":"o-1"})"));
        context_.set_transaction_opener([]() -> boost::asio::awaitable<pg::Transaction*> { co_return nullptr; });
    }

    simdjson::dom::parser parser_;
    Envelope envelope_;
    TraceContext trace_ = TraceContext::start_span({});
    JobLogger logger_{LogFields{}};
    JobContext context_{envelope_, trace_, logger_, std::chrono::steady_clock::now() + 1min};
};

TEST_F(FollowUpTest, AJobEmittedWithADelayGoesThroughTheDelayLadder) {
    context_.emit("orders.expire", R"({"order_id":"o-1"})", 900s);
    context_.emit("orders.confirm", R"({"order_id":"o-1"})");
    const auto& emitted = context_.emitted();
    ASSERT_EQ(emitted.size(), 2U);
    EXPECT_EQ(emitted[0].exchange, topology::delay_entry_exchange());
    EXPECT_EQ(emitted[0].routing_key, topology::delay_routing_key(900s, "orders.expire"));
    EXPECT_EQ(topology::job_type_of_routing_key(emitted[0].routing_key), "orders.expire");
    EXPECT_EQ(emitted[0].message_id, "job-7/0");
    EXPECT_EQ(emitted[1].exchange, topology::kJobsExchange);
    EXPECT_EQ(emitted[1].routing_key, "orders.confirm");
}

TEST_F(FollowUpTest, ADelayTheLadderCannotHoldIsRefused) {
    EXPECT_THROW(context_.emit("orders.expire", "{}", topology::kMaxDelay + 1s), PermanentError);
    EXPECT_THROW(context_.emit("orders.expire", "{}", -1s), PermanentError);
    EXPECT_TRUE(context_.emitted().empty());
}

TEST_F(FollowUpTest, ACompensationKeepsTheFlowsIdsAndIsTheSameEveryTimeTheJobGivesUp) {
    const auto first = compensation_messages(envelope_, trace_, {{"orders.cancel", R"({"order_id":"o-1"})"}});
    const auto again = compensation_messages(envelope_, trace_, {{"orders.cancel", R"({"order_id":"o-1"})"}});
    ASSERT_EQ(first.size(), 1U);
    // Apart from what an attempt emits (job-7/0 …), and the same on a second settling: the inbox absorbs it.
    EXPECT_EQ(first[0].message_id, "job-7!compensation/0");
    EXPECT_EQ(again[0].message_id, first[0].message_id);
    EXPECT_EQ(first[0].correlation_id, "flow-1");
    EXPECT_EQ(first[0].traceparent, trace_.traceparent());
    EXPECT_EQ(first[0].routing_key, "orders.cancel");
    EXPECT_GT(first[0].enqueued_at_ms, 0);
}

TEST_F(FollowUpTest, ACompensationOfAnUnknownFamilyOrNotAnObjectIsRefused) {
    EXPECT_THROW((void)compensation_messages(envelope_, trace_, {{"nowhere.cancel", "{}"}}), PermanentError);
    EXPECT_THROW((void)compensation_messages(envelope_, trace_, {{"orders.cancel", "[1]"}}), PermanentError);
}

}  // namespace
}  // namespace conveyor
