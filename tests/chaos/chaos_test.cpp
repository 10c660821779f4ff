#include <atomic>
#include <cstdio>
#include <random>
#include <regex>
#include <thread>

#include "worker_fixture.hpp"

/// Faults against the real stack while workers run diag.ledger jobs, whose effect (a row per job id, counting
/// how often it was applied) shows every lost or duplicated effect. Each test is bounded in time and prints its
/// figures as one JSON line.
namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr int kJobs = 20'000;
/// Each ledger job holds its transaction this long, so that the faults land mid-run and mid-transaction: with group
/// commit a worker runs one job's turn at a time, its group open throughout, and 3 workers take about 15 s over
/// 20,000 jobs.
constexpr int kJobMs = 2;
constexpr auto kRunBound = 240s;

struct Tally {
    std::int64_t applied_once = 0;
    std::int64_t duplicate_effects = 0;
    std::int64_t lost = 0;
    std::uint32_t dead_lettered = 0;
};

class ChaosTest : public WorkerTest {
  protected:
    WorkerUnderTest start_chaos_worker(int index, std::vector<std::string> extra = {}) {
        std::vector<std::string> args{"--concurrency", "10", "--shutdown-grace", "10s", "--amqp-heartbeat", "5s"};
        args.insert(args.end(), extra.begin(), extra.end());
        return start_worker(args, fmt::format("chaos-{}-{}", index, ++generation_));
    }

    void start_workers(int count) {
        for (int i = 0; i < count; ++i) {
            workers_.push_back(start_chaos_worker(i));
        }
    }

    void publish_ledger_jobs(int count, const std::string& prefix, int ms = kJobMs) {
        std::vector<amqp::Message> jobs;
        jobs.reserve(static_cast<std::size_t>(count));
        for (int i = 0; i < count; ++i) {
            jobs.push_back(
                Broker::job("diag.ledger", fmt::format(R"({{"ms": {}}})", ms), fmt::format("{}{}", prefix, i)));
        }
        broker_.publish_all(std::move(jobs));
    }

    std::int64_t ledger_rows() { return database_.scalar("SELECT count(*) FROM conveyor.diag_ledger"); }

    /// Waits (bounded) until every job left its row, then counts.
    Tally settle(int jobs) {
        const bool complete = eventually([&] { return ledger_rows() >= jobs; }, kRunBound);
        // Late duplicates would show up now, if the inbox let any through.
        std::this_thread::sleep_for(2s);
        Tally tally;
        tally.applied_once = database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE applied = 1");
        tally.duplicate_effects =
            database_.scalar("SELECT coalesce(sum(applied - 1), 0) FROM conveyor.diag_ledger WHERE applied > 1");
        tally.lost = jobs - ledger_rows();
        tally.dead_lettered = broker_.ready("conveyor.diag.dlq");
        EXPECT_TRUE(complete) << "only " << ledger_rows() << " of " << jobs << " jobs applied within the bound";
        return tally;
    }

    /// Milliseconds from the fault's start until the ledger grows again, once the fault is over: the outage the
    /// workload saw.
    std::int64_t recovered_since(Clock::time_point fault_start) {
        const auto before = ledger_rows();
        eventually([&] { return ledger_rows() > before || ledger_rows() >= kJobs; }, 120s);
        return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - fault_start).count();
    }

    void report(const std::string& name, const Tally& tally, const std::vector<std::int64_t>& recovery_ms,
                Clock::time_point started) {
        const auto seconds = std::chrono::duration<double>(Clock::now() - started).count();
        std::printf(
            "{\"name\":\"%s\",\"jobs\":%d,\"applied_once\":%lld,\"lost\":%lld,\"duplicate_effects\":%lld,"
            "\"dead_lettered\":%u,\"faults\":%zu,\"recovery_ms\":[%s],\"seconds\":%.1f}\n",
            name.c_str(), kJobs, static_cast<long long>(tally.applied_once), static_cast<long long>(tally.lost),
            static_cast<long long>(tally.duplicate_effects), tally.dead_lettered, recovery_ms.size(),
            fmt::format("{}", fmt::join(recovery_ms, ",")).c_str(), seconds);
        std::fflush(stdout);
        EXPECT_EQ(tally.applied_once, kJobs);
        EXPECT_EQ(tally.lost, 0);
        EXPECT_EQ(tally.duplicate_effects, 0);
        EXPECT_EQ(tally.dead_lettered, 0U);
    }

    void stop_workers() {
        for (auto& worker : workers_) {
            history_dropped_ += static_cast<std::int64_t>(worker.metric("conveyor_history_dropped_total"));
            worker.process->signal(SIGTERM);
        }
        for (auto& worker : workers_) {
            const auto status = worker.process->wait(30s);
            EXPECT_TRUE(status.has_value()) << worker.process->log();
        }
        workers_.clear();
    }

    /// Restarts one of the local stack's servers once a quarter of the jobs are done.
    void restart_mid_run(const std::string& service, const std::string& name) {
        start_workers(3);
        const auto started = Clock::now();
        publish_ledger_jobs(kJobs, service + "-");
        ASSERT_TRUE(eventually([&] { return ledger_rows() >= kJobs / 4; }, 60s));
        const auto fault = Clock::now();
        const auto [status, output] =
            run_command({(source_dir() / "deploy/local/services").string(), "restart", service}, 120s);
        ASSERT_EQ(status, 0) << output;
        std::printf("{\"name\":\"%s_restart\",\"restart_ms\":%lld}\n", service.c_str(),
                    static_cast<long long>(
                        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - fault).count()));
        if (service == "rabbitmq") {
            broker_.reconnect();
        }
        std::vector<std::int64_t> recovery_ms{recovered_since(fault)};
        const auto tally = settle(kJobs);
        report(name, tally, recovery_ms, started);
        stop_workers();
    }

    std::vector<WorkerUnderTest> workers_;
    int generation_ = 0;
    std::int64_t history_dropped_ = 0;  ///< summed over the workers stop_workers() stopped
};

TEST_F(ChaosTest, KillingARandomWorkerEveryTwoSecondsLosesAndDuplicatesNothing) {
    start_workers(3);
    const auto started = Clock::now();
    publish_ledger_jobs(kJobs, "kill-");
    std::mt19937 random(std::random_device{}());
    std::vector<std::int64_t> recovery_ms;
    while (ledger_rows() < kJobs && Clock::now() - started < kRunBound) {
        std::this_thread::sleep_for(2s);
        if (ledger_rows() >= kJobs) {
            break;
        }
        const auto victim = static_cast<std::size_t>(random() % workers_.size());
        const auto killed = Clock::now();
        workers_[victim].process->signal(SIGKILL);
        ASSERT_TRUE(workers_[victim].process->wait(10s).has_value());
        // A pod's replacement: the time until it is ready again is this fault's recovery time.
        workers_[victim] = start_chaos_worker(static_cast<int>(victim));
        recovery_ms.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed).count());
    }
    const auto tally = settle(kJobs);
    report("chaos_sigkill_workers", tally, recovery_ms, started);
    EXPECT_GE(recovery_ms.size(), 3U) << "the run ended before enough kills to mean anything";
    stop_workers();
}

TEST_F(ChaosTest, RestartingRabbitMqMidRunLosesAndDuplicatesNothing) {
    restart_mid_run("rabbitmq", "chaos_restart_rabbitmq");
}

TEST_F(ChaosTest, RestartingPostgresqlMidRunLosesAndDuplicatesNothing) {
    restart_mid_run("postgres", "chaos_restart_postgresql");
    // The outage was shorter than the history buffer holds: every job is on record, nothing was dropped. The
    // workers have written what they held by the time they exited.
    const auto recorded = database_.scalar(
        "SELECT count(DISTINCT job_id) FROM conveyor.job_events WHERE job_id LIKE 'postgres-%' "
        "AND state IN ('succeeded', 'duplicate')");
    std::printf("{\"name\":\"chaos_restart_postgresql_history\",\"jobs\":%d,\"recorded\":%lld}\n", kJobs,
                static_cast<long long>(recorded));
    EXPECT_EQ(recorded, kJobs);
    EXPECT_EQ(history_dropped_, 0);
}

/// An outage longer than the history buffer: jobs still run, and every history event the worker could not keep
/// is counted, no more and no fewer.
TEST_F(ChaosTest, AHistoryOutageBeyondTheBufferCountsExactlyWhatItDropped) {
    constexpr int kNoops = 2'000;
    constexpr int kBuffer = 300;
    auto worker = start_worker({"--history-buffer", std::to_string(kBuffer)}, "chaos-history-outage");
    const auto services = (source_dir() / "deploy/local/services").string();
    const auto [stopped, stop_output] = run_command({services, "stop", "postgres"}, 120s);
    ASSERT_EQ(stopped, 0) << stop_output;
    std::vector<amqp::Message> jobs;
    for (int i = 0; i < kNoops; ++i) {
        jobs.push_back(Broker::job("diag.noop", "{}", fmt::format("outage-{}", i)));
    }
    broker_.publish_all(std::move(jobs));
    const bool ran = eventually([&] { return worker.succeeded() == kNoops; }, 60s);
    const auto [started, start_output] = run_command({services, "start", "postgres"}, 120s);
    ASSERT_EQ(started, 0) << start_output;
    ASSERT_TRUE(ran) << worker.process->log();
    // The test's own connection died with the server: the first query after the restart may fail.
    const auto recorded = [&]() -> std::int64_t {
        try {
            return database_.scalar(
                "SELECT count(DISTINCT job_id) FROM conveyor.job_events WHERE job_id LIKE 'outage-%'");
        } catch (const std::exception&) {
            return -1;
        }
    };
    ASSERT_TRUE(eventually([&] { return worker.metric("conveyor_history_buffered") == 0 && recorded() > 0; }, 60s))
        << worker.process->log();
    const auto dropped = static_cast<std::int64_t>(worker.metric("conveyor_history_dropped_total"));
    std::printf("{\"name\":\"chaos_history_outage\",\"jobs\":%d,\"buffer\":%d,\"recorded\":%lld,\"dropped\":%lld}\n",
                kNoops, kBuffer, static_cast<long long>(recorded()), static_cast<long long>(dropped));
    EXPECT_EQ(recorded() + dropped, kNoops);
    EXPECT_GE(recorded(), kBuffer);
    EXPECT_GE(dropped, kNoops - 2 * kBuffer);
    worker.process->signal(SIGTERM);
    EXPECT_EQ(worker.process->wait(30s), std::optional<int>(0)) << worker.process->log();
}

TEST_F(ChaosTest, StoppingEveryWorkerWithSigtermMidRunAndStartingThemAgainLosesNothing) {
    start_workers(3);
    const auto started = Clock::now();
    publish_ledger_jobs(kJobs, "drain-");
    ASSERT_TRUE(eventually([&] { return ledger_rows() >= kJobs / 3; }, 60s));
    const auto fault = Clock::now();
    stop_workers();
    start_workers(3);
    std::vector<std::int64_t> recovery_ms{recovered_since(fault)};
    const auto tally = settle(kJobs);
    report("chaos_sigterm_all_workers", tally, recovery_ms, started);
    stop_workers();
}

/// The jobs a worker has taken but not started when it gets SIGTERM must not be requeued: on RabbitMQ 3.10 each
/// requeue counts toward x-delivery-limit (20) and returns the job to the head of the queue, where the next worker
/// takes it again, so some twenty rollouts of slow workers would dead-letter jobs that never ran. Two workers that
/// run one 300 ms job at a time with 100 prefetched are restarted one after the other, 30 rounds, while a stream of
/// jobs arrives: nothing is dead-lettered, lost or applied twice.
TEST_F(ChaosTest, ThirtyRollingRestartsUnderAStreamDeadLetterNothingAndLoseNothing) {
    constexpr int kRounds = 30;
    constexpr int kBacklog = 1000;
    const auto start_slow_worker = [this](int slot) {
        return start_worker({"--concurrency", "1", "--prefetch", "100", "--shutdown-grace", "10s"},
                            fmt::format("rolling-{}-{}", slot, ++generation_));
    };
    const auto started = Clock::now();
    std::vector<WorkerUnderTest> fleet;
    for (int slot = 0; slot < 2; ++slot) {
        fleet.push_back(start_slow_worker(slot));
    }
    publish_ledger_jobs(kBacklog, "rolling-", 300);
    std::atomic<int> streamed{0};
    std::jthread stream([&streamed](const std::stop_token& stop) {
        Broker publisher;
        publisher.connect();
        while (!stop.stop_requested()) {
            publisher.publish(Broker::job("diag.ledger", R"({"ms": 300})", fmt::format("stream-{}", streamed.load())));
            ++streamed;
            std::this_thread::sleep_for(250ms);
        }
    });
    std::int64_t handed_back = 0;
    int parking_failed = 0;
    const std::regex handed_back_line(R"((\d+) handed back unstarted)");
    for (int round = 0; round < kRounds; ++round) {
        for (int slot = 0; slot < 2; ++slot) {
            auto& worker = fleet[static_cast<std::size_t>(slot)];
            worker.process->signal(SIGTERM);
            ASSERT_EQ(worker.process->wait(30s), std::optional<int>(0)) << worker.process->log();
            const auto log = worker.process->log();
            std::smatch found;
            ASSERT_TRUE(std::regex_search(log, found, handed_back_line)) << log;
            handed_back += std::stoll(found[1]);
            // The broker was up throughout: a parking it did not confirm is the shutdown's own fault.
            parking_failed += log.find("could not be parked") == std::string::npos ? 0 : 1;
            worker = start_slow_worker(slot);
        }
    }
    stream.request_stop();
    stream.join();
    const auto restarts_seconds = std::chrono::duration<double>(Clock::now() - started).count();
    const auto ran_during_restarts = ledger_rows();
    // The backlog's end is run by one fast worker, so the test stays short: without group commit, since each of
    // these jobs holds its transaction for 300 ms, and a group runs its jobs one after another.
    for (auto& worker : fleet) {
        worker.process->signal(SIGTERM);
        EXPECT_EQ(worker.process->wait(30s), std::optional<int>(0)) << worker.process->log();
    }
    fleet.clear();
    workers_.push_back(start_worker({"--concurrency", "100", "--group-commit", "off"}, "rolling-finish"));
    const auto jobs = kBacklog + streamed.load();
    const auto tally = settle(jobs);
    std::printf(
        "{\"name\":\"chaos_rolling_restarts\",\"rounds\":%d,\"jobs\":%d,\"ran_during_restarts\":%lld,"
        "\"handed_back\":%lld,\"applied_once\":%lld,\"lost\":%lld,\"duplicate_effects\":%lld,"
        "\"dead_lettered\":%u,\"shutdowns_that_could_not_park\":%d,\"restarts_seconds\":%.1f}\n",
        kRounds, jobs, static_cast<long long>(ran_during_restarts), static_cast<long long>(handed_back),
        static_cast<long long>(tally.applied_once), static_cast<long long>(tally.lost),
        static_cast<long long>(tally.duplicate_effects), tally.dead_lettered, parking_failed, restarts_seconds);
    std::fflush(stdout);
    // Most of the backlog sat in the workers' prefetch at some shutdown, round after round.
    EXPECT_GT(handed_back, kRounds * 2 * 50);
    EXPECT_EQ(parking_failed, 0);
    EXPECT_EQ(tally.applied_once, jobs);
    EXPECT_EQ(tally.lost, 0);
    EXPECT_EQ(tally.duplicate_effects, 0);
    EXPECT_EQ(tally.dead_lettered, 0U);
    stop_workers();
}

/// A job that aborts the worker every time it runs must end in the dead-letter queue after a bounded number of
/// deliveries, and none of the 500 jobs the worker had prefetched alongside it may go with it.
TEST_F(ChaosTest, APoisonJobIsQuarantinedWithoutTakingItsPrefetchedNeighbours) {
    constexpr int kNeighbours = 5'000;
    const std::map<std::string, std::string> crash_enabled{{"CONVEYOR_ENABLE_CRASH_JOBS", "1"}};
    // A restarted worker may die on the poison job before anyone sees it ready: the loop below handles deaths,
    // so readiness is not awaited.
    auto start = [&] {
        return start_worker({"--concurrency", "50", "--prefetch", "500"}, fmt::format("poison-{}", ++generation_),
                            false, crash_enabled);
    };
    const auto started = Clock::now();
    publish_ledger_jobs(kNeighbours / 2, "before-poison-", 1);
    broker_.publish(Broker::job("diag.crash", "{}", "poison"));
    publish_ledger_jobs(kNeighbours / 2, "after-poison-", 1);

    auto worker = start();
    int deaths = 0;
    std::vector<amqp::Delivery> dead;
    // A supervisor's loop, as Kubernetes would restart the pod: bounded in restarts and time.
    while (dead.empty() && deaths < 10 && Clock::now() - started < 180s) {
        if (!worker.process->running()) {
            ++deaths;
            worker = start();
        }
        dead = broker_.take("conveyor.diag.dlq", 1, 200ms);
    }
    ASSERT_EQ(dead.size(), 1U) << "the poison job was not quarantined after " << deaths << " deaths";
    EXPECT_EQ(dead[0].message.properties.message_id, "poison");
    EXPECT_EQ(header_text(dead[0], "x-conveyor-reason"), "delivery_limit");
    EXPECT_TRUE(eventually([&] { return ledger_rows() == kNeighbours; }, 120s))
        << ledger_rows() << " of " << kNeighbours << "\n"
        << worker.process->log();
    std::this_thread::sleep_for(1s);
    const auto others_dead = broker_.ready("conveyor.diag.dlq");
    const auto duplicates = database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE applied > 1");
    std::printf(
        "{\"name\":\"chaos_poison_job\",\"neighbours\":%d,\"completed\":%lld,\"worker_deaths\":%d,"
        "\"neighbours_dead_lettered\":%u,\"duplicate_effects\":%lld,\"seconds\":%.1f}\n",
        kNeighbours, static_cast<long long>(ledger_rows()), deaths, others_dead, static_cast<long long>(duplicates),
        std::chrono::duration<double>(Clock::now() - started).count());
    EXPECT_EQ(others_dead, 0U);
    EXPECT_EQ(duplicates, 0);
    EXPECT_LE(deaths, 4) << "quarantine took more deaths than its bound";
    worker.process->signal(SIGTERM);
    worker.process->wait(30s);
}

/// A worker that dies after a group's commit and before its acknowledgements: every job of the group comes back,
/// finds its claim in the inbox and counts as a duplicate, and the jobs they emitted (committed to the outbox, not
/// yet published) are published by the next worker's outbox sweep. Every effect lands exactly once.
TEST_F(ChaosTest, AWorkerKilledBetweenAGroupsCommitAndItsAcknowledgementsAppliesNothingTwice) {
    constexpr int kParents = 2'000;  // each emits one more ledger job through the outbox
    const std::map<std::string, std::string> crash_enabled{{"CONVEYOR_ENABLE_CRASH_JOBS", "1"}};
    auto start = [&] {
        return start_worker({"--concurrency", "50", "--outbox-sweep-interval", "1s"},
                            fmt::format("crash-after-commit-{}", ++generation_), false, crash_enabled);
    };
    auto parents = [](int from, int to) {
        std::vector<amqp::Message> jobs;
        for (int i = from; i < to; ++i) {
            jobs.push_back(Broker::job("diag.ledger", R"({"emit": 1})", fmt::format("parent-{}", i)));
        }
        return jobs;
    };
    const auto started = Clock::now();
    broker_.publish_all(parents(0, kParents / 2));
    broker_.publish(Broker::job("diag.crash", R"({"after_commit": true})", "crash-after-commit"));
    broker_.publish_all(parents(kParents / 2, kParents));
    auto worker = start();
    ASSERT_TRUE(eventually([&] { return !worker.process->running(); }, 60s)) << worker.process->log();
    const auto died = worker.process->log();
    EXPECT_NE(died.find("committed; aborting the worker process before the acknowledgements"), std::string::npos)
        << died;
    worker = start();
    ASSERT_TRUE(eventually([&] { return ledger_rows() >= 2 * kParents; }, 120s))
        << ledger_rows() << " of " << 2 * kParents << "\n"
        << worker.process->log();
    std::this_thread::sleep_for(2s);  // late duplicates would show now
    const auto absorbed = worker.metric("conveyor_jobs_completed_total", {"outcome=\"duplicate\""});
    const auto twice = database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE applied > 1");
    const auto dead = broker_.ready("conveyor.diag.dlq");
    std::printf(
        "{\"name\":\"chaos_crash_after_group_commit\",\"effects\":%d,\"applied\":%lld,\"duplicate_effects\":%lld,"
        "\"redelivered_and_absorbed\":%.0f,\"dead_lettered\":%u,\"seconds\":%.1f}\n",
        2 * kParents, static_cast<long long>(ledger_rows()), static_cast<long long>(twice), absorbed, dead,
        std::chrono::duration<double>(Clock::now() - started).count());
    EXPECT_TRUE(worker.process->running()) << "the crash job ran again:\n" << worker.process->log();
    EXPECT_EQ(ledger_rows(), 2 * kParents);
    EXPECT_EQ(twice, 0);
    EXPECT_EQ(dead, 0U);
    // The crash job itself and its group's other jobs: committed before the death, redelivered after it.
    EXPECT_GE(absorbed, 2) << worker.process->log();
    worker.process->signal(SIGTERM);
    worker.process->wait(30s);
}

/// A broker frozen with SIGSTOP (a stalled node, a partition) must be noticed by heartbeats, reported by /readyz,
/// and survived: after SIGCONT the work resumes with nothing lost or applied twice.
TEST_F(ChaosTest, AFrozenBrokerIsDetectedByHeartbeatsAndWorkResumesAfterItThaws) {
    constexpr int kFrozenJobs = 3'000;
    start_workers(1);
    auto& worker = workers_[0];
    publish_ledger_jobs(kFrozenJobs, "frozen-", 10);
    ASSERT_TRUE(eventually([&] { return ledger_rows() >= 200; }, 30s));
    std::int64_t detected_ms = -1;
    {
        FrozenBroker frozen;
        ASSERT_TRUE(frozen.frozen());
        const auto froze = Clock::now();
        if (eventually([&] { return !worker.ready(); }, 40s)) {
            detected_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - froze).count();
        }
        std::this_thread::sleep_until(froze + 60s);
    }
    const auto thawed = Clock::now();
    ASSERT_TRUE(eventually([&] { return worker.ready(); }, 60s)) << worker.process->log();
    const auto ready_again_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - thawed).count();
    broker_.reconnect();
    ASSERT_TRUE(eventually([&] { return ledger_rows() >= kFrozenJobs; }, 120s)) << worker.process->log();
    std::this_thread::sleep_for(1s);
    const auto duplicates = database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE applied > 1");
    std::printf(
        "{\"name\":\"chaos_frozen_broker\",\"jobs\":%d,\"completed\":%lld,\"detected_ms\":%lld,"
        "\"ready_after_thaw_ms\":%lld,\"duplicate_effects\":%lld}\n",
        kFrozenJobs, static_cast<long long>(ledger_rows()), static_cast<long long>(detected_ms),
        static_cast<long long>(ready_again_ms), static_cast<long long>(duplicates));
    EXPECT_GE(detected_ms, 0) << "/readyz stayed 200 with the broker frozen";
    EXPECT_LE(detected_ms, 30'000);
    EXPECT_EQ(duplicates, 0);
    EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
    stop_workers();
}

}  // namespace
}  // namespace conveyor::testing
