// Fleet-wide rate limits against the real broker and database, with several worker processes: the starts of a
// backlogged type hold to the rate across the fleet (mean and every one-second window), jobs waiting for a token burn
// no attempt and hold up no other type of their queue, and a limit per key gives each key a bucket of its own.
#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <map>

#include "flow_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

/// Start times (seconds since the epoch) of the succeeded jobs whose id starts with `prefix`, by job, in order.
struct Ledger {
    std::vector<std::pair<double, std::string>> starts;  ///< (start, job id), earliest first

    [[nodiscard]] std::vector<double> times() const {
        std::vector<double> times;
        for (const auto& start : starts) {
            times.push_back(start.first);
        }
        return times;
    }
};

/// The most starts within any one second.
int busiest_second(const std::vector<double>& times) {
    int most = 0;
    std::size_t first = 0;
    for (std::size_t last = 0; last < times.size(); ++last) {
        while (times[last] - times[first] >= 1.0) {
            ++first;
        }
        most = std::max(most, static_cast<int>(last - first + 1));
    }
    return most;
}

class RateLimitsTest : public FlowLimitsTest {
  protected:
    Ledger ledger(const std::string& prefix) {
        Ledger ledger;
        const auto rows = database_.query(
            "SELECT extract(epoch FROM started_at)::double precision::text, job_id FROM conveyor.job_events "
            "WHERE state = 'succeeded' AND starts_with(job_id, $1) ORDER BY started_at",
            {prefix});
        for (const auto& row : rows) {
            ledger.starts.emplace_back(std::stod(row[0]), row[1]);
        }
        return ledger;
    }
};

/// Four workers of 10 coroutines each share a backlog of 1,250 jobs of a type limited to 50 starts a second (burst
/// 5): over the first 20 s the fleet starts 50 a second within 5%, no one-second window holds more than 55 starts,
/// every job ran once on its first attempt, and jobs of another type of the same queue run at once meanwhile.
TEST_F(RateLimitsTest, FourWorkersHoldTheFleetToTheRateAndBurnNoAttempt) {
    constexpr double kRate = 50;
    constexpr int kBurst = 5;
    constexpr int kJobs = 1'250;
    constexpr int kOthers = 20;
    apply_flow("jobs:\n  diag.sleep:\n    rate:\n      per_second: 50\n");
    std::vector<WorkerUnderTest> workers;
    workers.reserve(4);
    for (int n = 0; n < 4; ++n) {
        workers.push_back(
            start_worker({"--concurrency", "10", "--name", fmt::format("rated-{}", n)}, fmt::format("rated-{}", n)));
    }
    std::vector<amqp::Message> jobs;
    jobs.reserve(kJobs);
    for (int n = 0; n < kJobs; ++n) {
        jobs.push_back(Broker::job("diag.sleep", R"({"ms": 5})", fmt::format("rated-{}", n)));
    }
    broker_.publish_all(std::move(jobs));
    std::this_thread::sleep_for(3s);
    for (int n = 0; n < kOthers; ++n) {
        broker_.publish(Broker::job("diag.noop", "{}", fmt::format("unrated-{}", n)));
    }
    ASSERT_TRUE(eventually([&] { return succeeded(workers) >= kJobs + kOthers; }, 90s))
        << succeeded(workers) << " of " << kJobs + kOthers << " ran";
    ASSERT_TRUE(eventually([&] { return ledger("rated-").starts.size() >= kJobs; }, 30s));
    const auto times = ledger("rated-").times();
    EXPECT_EQ(times.size(), static_cast<std::size_t>(kJobs)) << "a job ran twice";
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE starts_with(job_id, 'rated-') "
                               "AND (attempt <> 1 OR state <> 'succeeded')"),
              0)
        << "a job waiting for a token burned an attempt";
    const auto in_twenty = std::count_if(times.begin(), times.end(), [&](double t) { return t < times[0] + 20; });
    const double mean = static_cast<double>(in_twenty) / 20;
    EXPECT_NEAR(mean, kRate, kRate * 0.05);
    const int busiest = busiest_second(times);
    EXPECT_LE(busiest, kRate + kBurst);
    const auto other_waits = database_.query(
        "SELECT max(extract(epoch FROM started_at - enqueued_at)) FROM conveyor.job_events "
        "WHERE state = 'succeeded' AND starts_with(job_id, 'unrated-')");
    EXPECT_LT(std::stod(other_waits[0][0]), 1.0) << "a job of another type waited behind the limited backlog";
    for (const auto& worker : workers) {
        EXPECT_GT(worker.metric("conveyor_jobs_parked_total", {"reason=\"rate_limit\""}), 0)
            << "a worker put no job in line";
    }
    EXPECT_TRUE(eventually(
        [&] { return workers[0].metric("conveyor_flow_rate_tokens", {"type=\"diag.sleep\""}) == kBurst; }, 5s))
        << "an idle bucket is not shown full";
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.rate_waiting"), 0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.rate_passes"), 0) << "a released job took no pass";
    std::cout << fmt::format(
        "[ figures  ] rate {}/s burst {}, 4 workers, {} jobs: {:.2f} starts/s over the first 20 s ({:+.2f}%), "
        "busiest second {} starts; another type's jobs waited at most {:.0f} ms\n",
        kRate, kBurst, kJobs, mean, (mean / kRate - 1) * 100, busiest, std::stod(other_waits[0][0]) * 1000);
}

/// A limit per key: two keys of 40 jobs each at 10 starts a second per key (burst 2) run side by side, each at its
/// own rate, in about 4 s rather than the 8 s one shared bucket would take.
TEST_F(RateLimitsTest, EachKeyHasABucketOfItsOwn) {
    constexpr int kPerKey = 40;
    apply_flow("jobs:\n  diag.sleep:\n    rate: {per_second: 10, burst: 2, key: /customer}\n");
    std::vector<WorkerUnderTest> workers;
    workers.reserve(2);
    for (int n = 0; n < 2; ++n) {
        workers.push_back(
            start_worker({"--concurrency", "10", "--name", fmt::format("keyed-{}", n)}, fmt::format("keyed-{}", n)));
    }
    std::vector<amqp::Message> jobs;
    jobs.reserve(std::size_t{2} * kPerKey);
    for (int n = 0; n < kPerKey; ++n) {
        for (const auto* customer : {"a", "b"}) {
            jobs.push_back(Broker::job("diag.sleep", fmt::format(R"({{"ms": 0, "customer": "{}"}})", customer),
                                       fmt::format("keyed-{}-{}", customer, n)));
        }
    }
    broker_.publish_all(std::move(jobs));
    ASSERT_TRUE(eventually([&] { return succeeded(workers) >= 2 * kPerKey; }, 60s));
    ASSERT_TRUE(eventually([&] { return ledger("keyed-").starts.size() >= std::size_t{2} * kPerKey; }, 30s));
    const auto all = ledger("keyed-").times();
    const double elapsed = all.back() - all.front();
    std::vector<double> rates;
    for (const auto* customer : {"a", "b"}) {
        const auto times = ledger(fmt::format("keyed-{}-", customer)).times();
        ASSERT_EQ(times.size(), static_cast<std::size_t>(kPerKey));
        const double rate = (kPerKey - 1) / (times.back() - times.front());
        rates.push_back(rate);
        EXPECT_NEAR(rate, 10, 1.0) << "key " << customer;
        EXPECT_LE(busiest_second(times), 12) << "key " << customer;
    }
    EXPECT_LT(elapsed, 6.0) << "the keys did not run side by side";
    std::cout << fmt::format(
        "[ figures  ] 2 keys x {} jobs at 10/s per key (burst 2): {:.2f} and {:.2f} starts/s, all within {:.2f} s\n",
        kPerKey, rates[0], rates[1], elapsed);
}

}  // namespace
}  // namespace conveyor::testing
