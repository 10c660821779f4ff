// Per-key concurrency limits against the real broker and database, with several worker processes: the limit holds
// across them at every instant, a quiet key is not stuck behind a backlog of another, and an applied flow file reaches
// every worker within seconds.
#include <fmt/format.h>

#include <algorithm>
#include <csignal>
#include <fstream>
#include <iostream>
#include <map>

#include "flow_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class ConcurrencyLimitsTest : public FlowLimitsTest {
  protected:
    static std::string limit_per_customer(int limit) {
        return fmt::format("jobs:\n  diag.sleep:\n    concurrency:\n      key: /customer\n      limit: {}\n", limit);
    }

    /// The most jobs of each key that ran at once, from the history's start and end of each job's attempt.
    std::map<std::string, int> most_at_once(const std::map<std::string, std::string>& key_of_job) {
        std::map<std::string, std::vector<std::pair<std::string, int>>> edges;  // key -> (time, +1 start / -1 end)
        const auto rows = database_.query(
            "SELECT job_id, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), "
            "to_char(ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM conveyor.job_events "
            "WHERE state = 'succeeded'");
        for (const auto& row : rows) {
            const auto key = key_of_job.find(row[0]);
            if (key != key_of_job.end()) {
                edges[key->second].emplace_back(row[1], 1);
                edges[key->second].emplace_back(row[2], -1);
            }
        }
        std::map<std::string, int> most;
        for (auto& [key, times] : edges) {
            // An end and a start at the same microsecond: the end first, as the place was freed before it was taken.
            std::sort(times.begin(), times.end());
            int running = 0;
            for (const auto& edge : times) {
                running += edge.second;
                most[key] = std::max(most[key], running);
            }
        }
        return most;
    }
};

/// Four workers of 20 coroutines each share 1,000 jobs of 20 keys with a limit of 2 per key: the history shows at no
/// instant more than 2 jobs of a key running, each key reached its limit, and jobs waited in line on every worker.
TEST_F(ConcurrencyLimitsTest, FourWorkersNeverRunMoreThanTheLimitOfAKeyAtOnce) {
    constexpr int kKeys = 20;
    constexpr int kJobsPerKey = 50;
    constexpr int kLimit = 2;
    apply_flow(limit_per_customer(kLimit));
    std::vector<WorkerUnderTest> workers;
    for (int n = 0; n < 4; ++n) {
        workers.push_back(start_worker({"--concurrency", "20", "--name", fmt::format("limited-{}", n)},
                                       fmt::format("limited-{}", n)));
    }
    std::map<std::string, std::string> key_of_job;
    std::vector<amqp::Message> jobs;
    for (int n = 0; n < kJobsPerKey; ++n) {
        for (int key = 0; key < kKeys; ++key) {
            const auto job_id = fmt::format("limited-{}-{}", key, n);
            key_of_job[job_id] = fmt::format("c{}", key);
            jobs.push_back(Broker::job("diag.sleep", fmt::format(R"({{"ms": 20, "customer": "c{}"}})", key), job_id));
        }
    }
    const auto started = Clock::now();
    broker_.publish_all(std::move(jobs));
    const bool all_ran = eventually([&] { return succeeded(workers) >= kKeys * kJobsPerKey; }, 120s);
    const auto seconds = std::chrono::duration<double>(Clock::now() - started).count();
    ASSERT_TRUE(all_ran) << succeeded(workers) << " of " << kKeys * kJobsPerKey << " ran";
    // Each job once: a copy run twice would have counted among the successes above.
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar(
                       "SELECT count(DISTINCT job_id) FROM conveyor.job_events WHERE state = "
                       "'succeeded'") >= kKeys * kJobsPerKey;
        },
        30s));
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE state = 'succeeded'"),
              kKeys * kJobsPerKey);
    const auto most = most_at_once(key_of_job);
    ASSERT_EQ(most.size(), static_cast<std::size_t>(kKeys));
    for (const auto& [key, at_once] : most) {
        EXPECT_LE(at_once, kLimit) << "key " << key;
        EXPECT_EQ(at_once, kLimit) << "key " << key << " never reached its limit: the test did not exercise it";
    }
    for (const auto& worker : workers) {
        EXPECT_GT(worker.metric("conveyor_jobs_parked_total", {"reason=\"concurrency_limit\""}), 0)
            << "a worker put no job in line";
    }
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.concurrency_waiting"), 0);
    std::cout << fmt::format("[ figures  ] {} jobs of {} keys, limit {} per key, 4 workers: {:.2f} s\n",
                             kKeys * kJobsPerKey, kKeys, kLimit, seconds);
}

/// One key has 20,000 jobs waiting for its limit of 2: jobs of quiet keys published one after another still start
/// within a second of their publish, for the backlog sits in the key's line, not in front of them in the queue.
TEST_F(ConcurrencyLimitsTest, AQuietKeyStartsWithinASecondBehindTwentyThousandJobsOfAnother) {
    constexpr int kBacklog = 20'000;
    constexpr int kQuiet = 20;
    apply_flow(limit_per_customer(2));
    std::vector<WorkerUnderTest> workers;
    for (int n = 0; n < 4; ++n) {
        workers.push_back(
            start_worker({"--concurrency", "25", "--name", fmt::format("fair-{}", n)}, fmt::format("fair-{}", n)));
    }
    std::vector<amqp::Message> backlog;
    for (int n = 0; n < kBacklog; ++n) {
        backlog.push_back(Broker::job("diag.sleep", R"({"ms": 50, "customer": "big"})"));
    }
    const auto published = Clock::now();
    broker_.publish_all(std::move(backlog));
    // The backlog has left the queue for its key's line. Its key runs 2 at a time meanwhile (40 jobs a second), so
    // how many are still in line depends on how fast they were parked; half of them is plenty to stand behind.
    const bool in_line = eventually(
        [&] {
            return broker_.ready(topology::queue_name("diag")) == 0 &&
                   database_.scalar("SELECT count(*) FROM conveyor.concurrency_waiting WHERE released_at IS NULL") >=
                       kBacklog / 2;
        },
        120s);
    ASSERT_TRUE(in_line) << database_.scalar("SELECT count(*) FROM conveyor.concurrency_waiting") << " jobs in line";
    const auto to_line = std::chrono::duration<double>(Clock::now() - published).count();
    std::vector<std::string> quiet_ids;
    for (int n = 0; n < kQuiet; ++n) {
        quiet_ids.push_back(fmt::format("quiet-{}", n));
        broker_.publish(
            Broker::job("diag.sleep", fmt::format(R"({{"ms": 0, "customer": "quiet-{}"}})", n), quiet_ids.back()));
        std::this_thread::sleep_for(100ms);
    }
    const auto quiet_list = "{" + fmt::format("{}", fmt::join(quiet_ids, ",")) + "}";
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar(
                       "SELECT count(*) FROM conveyor.job_events WHERE state = 'succeeded' AND "
                       "job_id = ANY($1::text[])",
                       {quiet_list}) == kQuiet;
        },
        30s));
    const auto waits = database_.query(
        "SELECT job_id, round(extract(epoch FROM started_at - enqueued_at) * 1000) FROM conveyor.job_events "
        "WHERE state = 'succeeded' AND job_id = ANY($1::text[]) ORDER BY 2",
        {quiet_list});
    for (const auto& row : waits) {
        EXPECT_LT(std::stod(row[1]), 1000) << row[0] << " waited " << row[1] << " ms to start";
    }
    EXPECT_GT(database_.scalar("SELECT count(*) FROM conveyor.concurrency_waiting"), kBacklog / 2)
        << "the backlog drained: the quiet keys were not measured behind it";
    std::cout << fmt::format(
        "[ figures  ] {} jobs of one key in line after {:.2f} s; {} quiet keys started {} ms (median) and {} ms "
        "(max) after their publish\n",
        kBacklog, to_line, kQuiet, waits[waits.size() / 2][1], waits.back()[1]);
}

/// A worker keeps the places of a key between its jobs; one that stops frees them as it leaves, so the key's next job
/// starts at once on another worker. One that dies frees them only when its lease (30 s, renewed every 10 s) runs
/// out: until then it may be alive behind a partition, still running its jobs, so their copies wait; the job it took
/// from a line, which only PostgreSQL holds, goes back to its line then and runs elsewhere.
TEST_F(ConcurrencyLimitsTest, AWorkerThatStopsFreesItsPlacesAtOnceAndOneThatDiesWhenItsLeaseRunsOut) {
    apply_flow(limit_per_customer(1));
    const auto live_places = [this] {
        return database_.scalar("SELECT count(*) FROM conveyor.concurrency_slots WHERE expires_at > now()");
    };
    const auto succeeded_jobs = [this] {
        return database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE state = 'succeeded'");
    };
    // Stopped just after its job: the place it kept for the key's next job goes back as it leaves.
    auto idle = start_worker({"--name", "leaving-idle"}, "leaving-idle");
    broker_.publish(Broker::job("diag.sleep", R"({"ms": 0, "customer": "k"})", "kept-0"));
    ASSERT_TRUE(eventually([&] { return idle.succeeded() == 1; }, 30s));
    idle.process->signal(SIGTERM);
    ASSERT_EQ(idle.process->wait(30s), std::optional<int>(0)) << idle.process->log();
    EXPECT_EQ(live_places(), 0) << "a worker that stopped kept a place it was not using";
    // Stopped while its job runs: the job ends within the grace period and its place goes back.
    auto busy = start_worker({"--name", "leaving-busy"}, "leaving-busy");
    broker_.publish(Broker::job("diag.sleep", R"({"ms": 1000, "customer": "k"})", "kept-1"));
    ASSERT_TRUE(eventually([&] { return busy.metric("conveyor_jobs_in_flight") == 1; }, 30s));
    EXPECT_EQ(live_places(), 1);
    busy.process->signal(SIGTERM);
    ASSERT_EQ(busy.process->wait(30s), std::optional<int>(0)) << busy.process->log();
    EXPECT_TRUE(eventually([&] { return succeeded_jobs() == 2; }, 10s))
        << "the stopping worker did not finish the job it was running";
    EXPECT_EQ(live_places(), 0) << "a worker that stopped kept the place of the job it finished";

    // Killed while it runs two jobs: one it got from the broker (its copy comes back to the queue at once), one it
    // took from its key's line (in PostgreSQL only), which it got when the job before it in the key ended there.
    auto dying = start_worker({"--name", "dying"}, "dying");
    broker_.publish(Broker::job("diag.sleep", R"({"ms": 5000, "customer": "j"})", "from-broker"));
    broker_.publish(Broker::job("diag.sleep", R"({"ms": 1000, "customer": "k"})", "before"));
    broker_.publish(Broker::job("diag.sleep", R"({"ms": 5000, "customer": "k"})", "from-line"));
    const auto taken_from_line = [this] {
        return database_.scalar("SELECT count(*) FROM conveyor.concurrency_waiting WHERE claimed_by IS NOT NULL");
    };
    ASSERT_TRUE(eventually([&] { return dying.succeeded() == 1 && taken_from_line() == 1 && live_places() == 2; }, 30s))
        << dying.process->log();
    dying.process->signal(SIGKILL);
    const auto killed = Clock::now();
    dying.process->wait(10s);
    auto surviving = start_worker({"--name", "surviving"}, "surviving");
    const auto both_ended = [this] {
        return database_.scalar(
                   "SELECT count(DISTINCT job_id) FROM conveyor.job_events WHERE state = 'succeeded' "
                   "AND job_id IN ('from-broker', 'from-line')") == 2;
    };
    ASSERT_TRUE(eventually(both_ended, 60s)) << surviving.process->log();
    const auto since_kill = std::chrono::duration<double>(Clock::now() - killed).count();
    // Renewed every 10 s, the leases ran out 20 to 30 s after the kill; then the jobs ran for 5 s.
    EXPECT_GE(since_kill, 25.0) << "a job ran again while its place was still leased to the dead worker";
    EXPECT_LT(since_kill, 50.0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE state = 'succeeded' AND job_id IN "
                               "('from-broker', 'from-line') AND worker = 'surviving'"),
              2);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.concurrency_waiting"), 0);
    std::cout << fmt::format(
        "[ figures  ] the jobs of a SIGKILLed worker's keys ran again and ended {:.1f} s after "
        "the kill\n",
        since_kill);
}

/// An applied file is in force on every worker within 5 s, without a restart; a bad one changes nothing.
TEST_F(ConcurrencyLimitsTest, AnAppliedFileReachesEveryWorkerWithinFiveSecondsAndABadOneChangesNothing) {
    std::vector<WorkerUnderTest> workers;
    for (int n = 0; n < 2; ++n) {
        workers.push_back(start_worker({"--name", fmt::format("follower-{}", n)}, fmt::format("follower-{}", n)));
    }
    const auto applied = Clock::now();
    EXPECT_NE(apply_flow(limit_per_customer(3)).find("as version 1"), std::string::npos);
    const bool everywhere = eventually(
        [&] {
            return std::all_of(workers.begin(), workers.end(),
                               [](const auto& worker) { return worker.metric("conveyor_flow_version") == 1; });
        },
        10s);
    const auto seconds = std::chrono::duration<double>(Clock::now() - applied).count();
    EXPECT_TRUE(everywhere);
    EXPECT_LT(seconds, 5.0);
    const auto path = std::filesystem::temp_directory_path() / "conveyor-flow-bad.yaml";
    std::ofstream(path) << "jobs:\n  diag.sleep:\n    concurrency:\n      key: /customer\n      limit: -1\n";
    const auto [status, output] =
        run_command({(binary_dir() / "conveyor").string(), "flow", "apply", path.string(), "--pg-url", pg_url()}, 30s);
    EXPECT_EQ(status, 2);
    EXPECT_NE(output.find("conveyor-flow-bad.yaml:5: diag.sleep concurrency limit must be a whole number"),
              std::string::npos)
        << output;
    EXPECT_EQ(database_.scalar("SELECT max(version) FROM conveyor.flow_config"), 1);
    const auto shown = run_cli({"flow", "show", "--json", "--pg-url", pg_url()});
    EXPECT_NE(shown.find(R"("version":1)"), std::string::npos) << shown;
    EXPECT_NE(shown.find(R"("limit":3)"), std::string::npos) << shown;
    std::cout << fmt::format("[ figures  ] flow version 1 in force on 2 workers {:.2f} s after apply\n", seconds);
}

}  // namespace
}  // namespace conveyor::testing
