#include "capacity.hpp"

#include <gtest/gtest.h>

namespace conveyor::worker {
namespace {

using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

const std::vector<double> kBounds{0.1, 0.2, 1.0};

/// A cumulative histogram with `fast` jobs under 0.1 s and `medium` ones between 0.1 and 0.2 s.
std::vector<double> histogram(double fast, double medium) {
    return {fast, fast + medium, fast + medium, fast + medium};
}

CapacityEstimator estimator(unsigned concurrency) {
    return CapacityEstimator({.duration_bounds = kBounds, .concurrency = concurrency});
}

TEST(CapacityQuantile, InterpolatesWithinTheBucketAsHistogramQuantileDoes) {
    const auto p95 = CapacityEstimator::quantile(0.95, kBounds, histogram(0, 0), histogram(0, 100));
    ASSERT_TRUE(p95);
    EXPECT_NEAR(*p95, 0.195, 1e-9);
    // Only what happened between the two snapshots counts.
    const auto recent = CapacityEstimator::quantile(0.95, kBounds, histogram(1000, 0), histogram(1000, 100));
    ASSERT_TRUE(recent);
    EXPECT_NEAR(*recent, 0.195, 1e-9);
    EXPECT_FALSE(CapacityEstimator::quantile(0.95, kBounds, histogram(5, 5), histogram(5, 5)));
    EXPECT_EQ(CapacityEstimator::quantile(0.95, kBounds, {0, 0, 0, 0}, {0, 0, 0, 10}), 1.0) << "+Inf bucket";
}

TEST(CapacityEstimate, GivesNoFigureBeforeItHasSeenThirtySeconds) {
    // A new worker with a backlog in front of it knows neither the rate nor the durations yet.
    auto capacity = estimator(10);
    const auto start = Clock::now();
    EXPECT_FALSE(capacity.observe(start, {{"conveyor.diag", {30000, 1, 0, 0, histogram(0, 0)}}}));
    EXPECT_FALSE(capacity.observe(start + seconds(25), {{"conveyor.diag", {30000, 1, 0, 0, histogram(0, 0)}}}));
    EXPECT_TRUE(capacity.observe(start + seconds(30), {{"conveyor.diag", {30000, 1, 0, 0, histogram(0, 0)}}}));
}

TEST(CapacityEstimate, AnIdleQueueNeedsNoWorker) {
    auto capacity = estimator(10);
    const auto start = Clock::now();
    capacity.observe(start, {{"conveyor.diag", {0, 1, 0, 0, histogram(0, 0)}}});
    EXPECT_EQ(capacity.observe(start + seconds(30), {{"conveyor.diag", {0, 1, 0, 0, histogram(0, 0)}}}).value_or(99),
              0U);
}

TEST(CapacityEstimate, TheJobsRunningNowAreAFloor) {
    // Three workers each running 10 jobs of several minutes: nothing settles and nothing waits, but 30 slots
    // are taken; scaling in to fewer than three would cut jobs short.
    auto capacity = estimator(10);
    const auto start = Clock::now();
    capacity.observe(start, {{"conveyor.orders", {0, 3, 0, 10, histogram(0, 0)}}});
    EXPECT_EQ(capacity.observe(start + seconds(60), {{"conveyor.orders", {0, 3, 0, 10, histogram(0, 0)}}}).value_or(99),
              3U);
}

TEST(CapacityEstimate, KeepingUpNeedsArrivalsTimesDurationSlots) {
    // This worker settles 100 jobs/s of 0.1–0.2 s (p95 0.195 s): 19.5 slots, two workers of 10.
    auto capacity = estimator(10);
    const auto start = Clock::now();
    capacity.observe(start, {{"conveyor.diag", {0, 1, 0, 0, histogram(0, 0)}}});
    EXPECT_EQ(
        capacity.observe(start + seconds(60), {{"conveyor.diag", {0, 1, 6000, 0, histogram(0, 6000)}}}).value_or(99),
        2U);
    EXPECT_NEAR(capacity.estimates().at("conveyor.diag").arrivals_per_second, 100, 1e-9);
    EXPECT_NEAR(capacity.estimates().at("conveyor.diag").slots, 19.5, 1e-9);
}

TEST(CapacityEstimate, TheClusterRateIsThisWorkersShareTimesTheConsumers) {
    // Four consumers each settling 100 jobs/s: 400/s x 0.195 s = 78 slots, eight workers of 10.
    auto capacity = estimator(10);
    const auto start = Clock::now();
    capacity.observe(start, {{"conveyor.diag", {0, 4, 0, 0, histogram(0, 0)}}});
    EXPECT_EQ(
        capacity.observe(start + seconds(60), {{"conveyor.diag", {0, 4, 6000, 0, histogram(0, 6000)}}}).value_or(99),
        8U);
}

TEST(CapacityEstimate, AGrowingBacklogCountsAsArrivalsAndIsToBeDrained) {
    // Nobody consumes; 600 arrived in a minute (10/s) and wait. Unknown duration: 1 s. 10 slots to keep up and
    // 600 x 1 s / 60 s = 10 to drain: two workers of 10.
    auto capacity = estimator(10);
    const auto start = Clock::now();
    capacity.observe(start, {{"conveyor.orders", {0, 0, 0, 0, histogram(0, 0)}}});
    EXPECT_EQ(
        capacity.observe(start + seconds(60), {{"conveyor.orders", {600, 0, 0, 0, histogram(0, 0)}}}).value_or(99), 2U);
    EXPECT_NEAR(capacity.estimates().at("conveyor.orders").arrivals_per_second, 10, 1e-9);
}

TEST(CapacityEstimate, QueuesAddUp) {
    auto capacity = estimator(10);
    const auto start = Clock::now();
    capacity.observe(start, {{"conveyor.diag", {0, 1, 0, 0, histogram(0, 0)}}, {"conveyor.emails", {0, 1, 0, 0, {}}}});
    // 19.5 slots for diag; the emails' 600 arrived in the minute (10/s x 1 s) and wait (600 x 1 s / 60 s): 20.
    // 39.5 slots, four workers.
    EXPECT_EQ(capacity
                  .observe(start + seconds(60), {{"conveyor.diag", {0, 1, 6000, 0, histogram(0, 6000)}},
                                                 {"conveyor.emails", {600, 1, 0, 0, {}}}})
                  .value_or(99),
              4U);
}

TEST(CapacityEstimate, ABurstOlderThanTheWindowIsForgotten) {
    auto capacity = estimator(10);
    const auto start = Clock::now();
    capacity.observe(start, {{"conveyor.diag", {0, 1, 0, 0, histogram(0, 0)}}});
    capacity.observe(start + seconds(5), {{"conveyor.diag", {0, 1, 6000, 0, histogram(0, 6000)}}});
    std::optional<std::uint32_t> needed;
    for (int tick = 2; tick <= 30; ++tick) {
        needed = capacity.observe(start + seconds(5 * tick), {{"conveyor.diag", {0, 1, 6000, 0, histogram(0, 6000)}}});
    }
    EXPECT_EQ(needed.value_or(99), 0U) << "two minutes later nothing arrives and nothing waits";
}

}  // namespace
}  // namespace conveyor::worker
