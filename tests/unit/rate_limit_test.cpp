#include "conveyor/core/rate_limit.hpp"

#include <gtest/gtest.h>

#include <string>
#include <thread>

namespace conveyor {
namespace {

TEST(TokenBucketsTest, AllowsTheBurstThenSaysHowLongToWait) {
    TokenBuckets buckets;
    for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(buckets.try_acquire("client", 1.0, 4.0), std::nullopt) << "request " << i;
    }
    const auto wait = buckets.try_acquire("client", 1.0, 4.0);
    ASSERT_TRUE(wait);
    EXPECT_GT(wait->count(), 0);
    EXPECT_LE(wait->count(), 1000);
    EXPECT_EQ(buckets.try_acquire("other", 1.0, 4.0), std::nullopt) << "each key has its own bucket";
}

TEST(TokenBucketsTest, RefillsAtItsRate) {
    TokenBuckets buckets;
    EXPECT_EQ(buckets.try_acquire("client", 100.0, 1.0), std::nullopt);
    EXPECT_TRUE(buckets.try_acquire("client", 100.0, 1.0));
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    EXPECT_EQ(buckets.try_acquire("client", 100.0, 1.0), std::nullopt);
}

TEST(TokenBucketsTest, ForgetsTheLeastRecentKeysInsteadOfGrowing) {
    TokenBuckets buckets(100);
    for (int i = 0; i < 1000; ++i) {
        (void)buckets.try_acquire("client-" + std::to_string(i), 1.0, 1.0);
        ASSERT_LE(buckets.size(), 100U);
    }
    // The most recent keys are still remembered (and empty).
    EXPECT_TRUE(buckets.try_acquire("client-999", 1.0, 1.0));
}

TEST(LogThrottleTest, LetsOneLineThroughPerIntervalAndCountsTheRest) {
    LogThrottle throttle(std::chrono::milliseconds(300));
    EXPECT_EQ(throttle.admit(), std::optional<std::uint64_t>(0));
    for (int i = 0; i < 5; ++i) {
        EXPECT_EQ(throttle.admit(), std::nullopt);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(350));
    EXPECT_EQ(throttle.admit(), std::optional<std::uint64_t>(5));
    EXPECT_EQ(throttle.admit(), std::nullopt);
}

}  // namespace
}  // namespace conveyor
