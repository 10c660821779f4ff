#include "unsettled.hpp"

#include <gtest/gtest.h>

namespace conveyor::amqp::detail {
namespace {

using State = Unsettled::State;

TEST(Unsettled, AContiguousAckedPrefixGoesOutAsOneMultipleAck) {
    Unsettled unsettled;
    for (std::uint64_t tag = 1; tag <= 5; ++tag) {
        ASSERT_TRUE(unsettled.delivered(tag));
    }
    ASSERT_TRUE(unsettled.mark(2, State::acked));
    ASSERT_TRUE(unsettled.mark(1, State::acked));
    ASSERT_TRUE(unsettled.mark(3, State::acked));
    std::vector<std::uint64_t> stragglers;
    EXPECT_EQ(unsettled.take_settled_prefix(stragglers), 3U);
    EXPECT_TRUE(stragglers.empty());
}

TEST(Unsettled, NeverAcksPastAJobStillRunning) {
    Unsettled unsettled;
    for (std::uint64_t tag = 1; tag <= 4; ++tag) {
        ASSERT_TRUE(unsettled.delivered(tag));
    }
    // Tag 1 is a long job still running; 2..4 finished.
    ASSERT_TRUE(unsettled.mark(2, State::acked));
    ASSERT_TRUE(unsettled.mark(4, State::acked));
    std::vector<std::uint64_t> stragglers;
    EXPECT_EQ(unsettled.take_settled_prefix(stragglers), 0U);
    EXPECT_EQ(stragglers, (std::vector<std::uint64_t>{2, 4}));
    // They were acked one by one; when tag 1 ends only it is left to ack, as the new prefix.
    ASSERT_TRUE(unsettled.mark(1, State::acked));
    stragglers.clear();
    EXPECT_EQ(unsettled.take_settled_prefix(stragglers), 1U);
    EXPECT_TRUE(stragglers.empty());
    EXPECT_FALSE(unsettled.mark(2, State::acked)) << "a settled tag cannot be acked twice";
}

TEST(Unsettled, ARejectedTagIsNeverTheTargetOfAMultipleAck) {
    Unsettled unsettled;
    for (std::uint64_t tag = 10; tag <= 12; ++tag) {
        ASSERT_TRUE(unsettled.delivered(tag));
    }
    ASSERT_TRUE(unsettled.mark(10, State::acked));
    ASSERT_TRUE(unsettled.mark(11, State::acked));
    ASSERT_TRUE(unsettled.mark(12, State::settled));
    std::vector<std::uint64_t> stragglers;
    EXPECT_EQ(unsettled.take_settled_prefix(stragglers), 11U);
    ASSERT_TRUE(unsettled.delivered(13));
    ASSERT_TRUE(unsettled.mark(13, State::acked));
    EXPECT_EQ(unsettled.take_settled_prefix(stragglers), 13U);
}

TEST(Unsettled, UnknownTagsAreLeftToTheCallerAndAGapIsRefused) {
    Unsettled unsettled;
    ASSERT_TRUE(unsettled.delivered(5));
    EXPECT_FALSE(unsettled.mark(4, State::acked));
    EXPECT_FALSE(unsettled.mark(6, State::acked));
    // A multiple=true ack past a gap could cover deliveries still running: the connection must give up instead.
    EXPECT_FALSE(unsettled.delivered(9));
    ASSERT_TRUE(unsettled.delivered(6));
    // A new session starts its tags again.
    unsettled.clear();
    EXPECT_FALSE(unsettled.mark(5, State::acked));
    ASSERT_TRUE(unsettled.delivered(1));
    EXPECT_TRUE(unsettled.mark(1, State::acked));
}

}  // namespace
}  // namespace conveyor::amqp::detail
