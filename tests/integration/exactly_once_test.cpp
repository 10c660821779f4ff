#include <signal.h>

#include "worker_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

TEST_F(WorkerTest, LedgerJobsApplyTheirEffectOnceAndRedeliveredCopiesAreAbsorbedByTheInbox) {
    auto worker = start_worker({}, "inbox");
    for (int i = 0; i < 200; ++i) {
        broker_.publish(Broker::job("diag.ledger", "{}", fmt::format("ledger-{}", i)));
    }
    // The same ids again, as a publisher retrying after a lost confirm would send them.
    for (int i = 0; i < 200; i += 4) {
        broker_.publish(Broker::job("diag.ledger", "{}", fmt::format("ledger-{}", i)));
    }
    ASSERT_TRUE(eventually(
        [&] { return worker.metric("conveyor_jobs_completed_total", {"type=\"diag.ledger\""}) == 250; }, 30s))
        << worker.process->log();
    EXPECT_EQ(worker.metric("conveyor_jobs_completed_total", {"outcome=\"duplicate\""}), 50);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.diag_ledger"), 200);
    EXPECT_EQ(database_.scalar("SELECT max(applied) FROM conveyor.diag_ledger"), 1);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.inbox WHERE type = 'diag.ledger'"), 200);
}

/// A clean drain acknowledges everything it settled before its connection closes: a delivery that was applied and
/// acknowledged must never come back to the next consumer (once, 12,974 did). Two workers each drain mid-stream;
/// then every job still in the queue is one that never applied, and with the applied ones they are all the jobs.
TEST_F(WorkerTest, AfterACleanDrainNothingAcknowledgedComesBack) {
    constexpr int kJobs = 8'000;
    std::vector<amqp::Message> jobs;
    jobs.reserve(kJobs);
    for (int i = 0; i < kJobs; ++i) {
        jobs.push_back(Broker::job("diag.ledger", "{}", fmt::format("drain-{}", i)));
    }
    broker_.publish_all(std::move(jobs));
    std::vector<WorkerUnderTest> workers;
    for (const auto* name : {"drain-a", "drain-b"}) {
        workers.push_back(start_worker({"--name", name, "--concurrency", "50", "--shutdown-grace", "30s"}, name));
    }
    const auto applied = [&] { return database_.scalar("SELECT count(*) FROM conveyor.diag_ledger"); };
    for (std::size_t i = 0; i < workers.size(); ++i) {
        const auto threshold = static_cast<std::int64_t>(kJobs * (i + 1) / 4);
        ASSERT_TRUE(eventually([&] { return applied() >= threshold; }, 60s)) << applied();
        workers[i].process->signal(SIGTERM);
        const auto status = workers[i].process->wait(40s);
        ASSERT_EQ(status, std::optional<int>(0)) << workers[i].process->log();
    }
    const auto applied_at_the_end = applied();
    ASSERT_LT(applied_at_the_end, kJobs) << "the stream ran out before the drains";

    const auto left = broker_.take("conveyor.diag", kJobs, 10s);
    std::vector<std::string> came_back;
    for (const auto& delivery : left) {
        const auto& id = delivery.message.properties.message_id;
        if (database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE job_id = $1", {id}) != 0) {
            came_back.push_back(id);
        }
    }
    EXPECT_TRUE(came_back.empty()) << came_back.size() << " applied and acknowledged jobs came back, e.g. "
                                   << came_back.front();
    EXPECT_EQ(applied_at_the_end + static_cast<std::int64_t>(left.size()), kJobs)
        << applied_at_the_end << " applied, " << left.size() << " left in the queue";
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE applied <> 1"), 0);
}

TEST_F(WorkerTest, EmittedJobsArePublishedAfterTheCommitAndLeaveTheOutboxEmpty) {
    auto worker = start_worker({}, "outbox");
    auto parent = Broker::job("diag.ledger", R"({"emit": 3})", "parent");
    parent.properties.correlation_id = "flow-9";
    broker_.publish(std::move(parent));
    ASSERT_TRUE(eventually([&] { return database_.scalar("SELECT count(*) FROM conveyor.diag_ledger") == 4; }, 30s))
        << worker.process->log();
    const auto rows = database_.query("SELECT job_id, applied FROM conveyor.diag_ledger ORDER BY job_id");
    const Database::Rows expected{{"parent", "1"}, {"parent/0", "1"}, {"parent/1", "1"}, {"parent/2", "1"}};
    EXPECT_EQ(rows, expected);
    ASSERT_TRUE(eventually([&] { return database_.scalar("SELECT count(*) FROM conveyor.outbox") == 0; }, 10s));
    EXPECT_TRUE(eventually([&] { return worker.metric("conveyor_outbox_pending") == 0; }, 10s));
}

TEST_F(WorkerTest, TheSweeperPublishesWhatACrashLeftInTheOutboxAndARepublishedRowIsADuplicate) {
    auto worker = start_worker({"--outbox-sweep-interval", "300ms"}, "outbox-sweep");
    // Two rows as a worker that died between its commit and its publish would leave them.
    const std::string left_behind =
        "INSERT INTO conveyor.outbox (message_id, exchange, routing_key, body, created_at) "
        "VALUES ($1, 'conveyor.jobs', 'diag.ledger', '{}', now() - interval '1 minute')";
    database_.query(left_behind, {"orphan-1"});
    database_.query(left_behind, {"orphan-2"});
    ASSERT_TRUE(eventually([&] { return database_.scalar("SELECT count(*) FROM conveyor.diag_ledger") == 2; }, 30s))
        << worker.process->log();
    EXPECT_TRUE(eventually([&] { return database_.scalar("SELECT count(*) FROM conveyor.outbox") == 0; }, 10s));

    // A crash between the broker's confirm and the row's delete publishes the same message again.
    database_.query(left_behind, {"orphan-1"});
    ASSERT_TRUE(
        eventually([&] { return worker.metric("conveyor_jobs_completed_total", {"outcome=\"duplicate\""}) == 1; }, 30s))
        << worker.process->log();
    EXPECT_EQ(database_.scalar("SELECT max(applied) FROM conveyor.diag_ledger"), 1);
}

TEST_F(WorkerTest, InboxRowsAndExecutionRecordsOlderThanTheRetentionArePruned) {
    database_.query(
        "INSERT INTO conveyor.inbox (message_id, type, processed_at) "
        "SELECT 'old-' || n, 'diag.ledger', now() - interval '3 days' FROM generate_series(1, 25000) AS n");
    database_.query("INSERT INTO conveyor.inbox (message_id, type) VALUES ('recent', 'diag.ledger')");
    database_.query(
        "INSERT INTO conveyor.job_executions (job_id, queue, starts, last_started_at) "
        "VALUES ('stale', 'conveyor.diag', 1, now() - interval '3 days'), ('fresh', 'conveyor.diag', 1, now())");
    // Pruning runs when the worker starts and every 10 minutes after, in batches of 10,000.
    auto worker = start_worker({"--inbox-retention", "2d"}, "inbox-prune");
    // The line is logged once both tables are pruned; the inbox alone is done before the execution records.
    ASSERT_TRUE(eventually(
        [&] {
            return worker.process->log().find("pruned 25000 inbox rows and 1 execution records") != std::string::npos;
        },
        30s))
        << database_.scalar("SELECT count(*) FROM conveyor.inbox") << " inbox rows left\n"
        << worker.process->log();
    EXPECT_EQ(database_.query("SELECT message_id FROM conveyor.inbox"), (Database::Rows{{"recent"}}));
    EXPECT_EQ(database_.query("SELECT job_id FROM conveyor.job_executions"), (Database::Rows{{"fresh"}}));
}

TEST_F(WorkerTest, AJobThatTimesOutIsRetriedRolledBackEachTimeAndDeadLetteredAsTimeout) {
    auto worker = start_worker({"--job-timeout", "300ms", "--retry", "diag.ledger=attempts:2,base:1s"}, "timeout");
    broker_.publish(Broker::job("diag.ledger", R"({"ms": 2000})", "too-slow"));
    const auto dead = broker_.take("conveyor.diag.dlq", 1, 30s);
    ASSERT_EQ(dead.size(), 1U) << worker.process->log();
    EXPECT_EQ(header_text(dead[0], "x-conveyor-reason"), "timeout");
    EXPECT_EQ(header_text(dead[0], "x-conveyor-attempts"), "2");
    EXPECT_EQ(worker.metric("conveyor_jobs_completed_total", {"outcome=\"retry\""}), 1);
    // Neither attempt committed: no effect, no inbox row, so a replay would run it.
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.diag_ledger"), 0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.inbox"), 0);
}

TEST_F(WorkerTest, ALockTimeoutIsRetriedNotDeadLettered) {
    auto worker = start_worker({"--retry", "diag.ledger=base:1s,cap:1s"}, "lock-timeout");
    auto holder = hold_ledger_row("locked");
    ASSERT_FALSE(HasFailure());
    broker_.publish(Broker::job("diag.ledger", R"({"lock_timeout_ms": 200})", "locked"));
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar(
                       "SELECT applied FROM conveyor.diag_ledger WHERE job_id = "
                       "'locked'") == 1;
        },
        30s))
        << worker.process->log();
    EXPECT_GE(worker.metric("conveyor_jobs_completed_total", {"outcome=\"retry\""}), 1);
    EXPECT_NE(worker.process->log().find("55P03"), std::string::npos) << worker.process->log();
    EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
    holder->wait(10s);
}

TEST_F(WorkerTest, ADeadlockBetweenTwoJobsIsRetriedNotDeadLettered) {
    // Each in a transaction of its own: with group commit, a deadlock is resolved before it is detected (below).
    auto worker = start_worker({"--retry", "diag.ledger=base:1s,cap:1s", "--group-commit", "off"}, "deadlock");
    // Each job writes its own row, waits, then writes the other's: PostgreSQL aborts one of them (40P01).
    broker_.publish(Broker::job("diag.ledger", R"({"ms": 300, "also": "deadlock-b"})", "deadlock-a"));
    broker_.publish(Broker::job("diag.ledger", R"({"ms": 300, "also": "deadlock-a"})", "deadlock-b"));
    ASSERT_TRUE(
        eventually([&] { return worker.metric("conveyor_jobs_completed_total", {"outcome=\"success\""}) == 2; }, 30s))
        << worker.process->log();
    EXPECT_GE(worker.metric("conveyor_jobs_completed_total", {"outcome=\"retry\""}), 1);
    EXPECT_NE(worker.process->log().find("40P01"), std::string::npos) << worker.process->log();
    // Each row was written once by its own job and once by the other: the aborted attempt left nothing.
    EXPECT_EQ(database_.scalar("SELECT sum(applied) FROM conveyor.diag_ledger"), 4);
    EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
}

TEST_F(WorkerTest, AJobWaitingForALockHeldOutsideItsGroupLeavesTheGroupAndRunsAgainAloneWithoutARetry) {
    // Another session holds a row for 3 s. The job that wants it waits in its group for the group's lock wait, then
    // leaves the group, which commits the job beside it at once; alone, it waits for the row as long as it takes.
    // Handled as the job's own failure (55P03), it would be retried.
    auto worker = start_worker({"--log-level", "debug"}, "group-lock-wait");
    auto holder = hold_ledger_row("held-row");
    ASSERT_FALSE(HasFailure());
    broker_.publish(Broker::job("diag.ledger", R"({"also": "held-row"})", "group-lock-waiter"));
    broker_.publish(Broker::job("diag.ledger", "{}", "group-lock-neighbour"));
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar(
                       "SELECT count(*) FROM conveyor.diag_ledger WHERE job_id = 'group-lock-neighbour'") == 1;
        },
        2s))
        << "the neighbour waited for the row too:\n"
        << worker.process->log();
    EXPECT_EQ(database_.scalar("SELECT applied FROM conveyor.diag_ledger WHERE job_id = 'held-row'"), 0);
    ASSERT_TRUE(
        eventually([&] { return worker.metric("conveyor_jobs_completed_total", {"outcome=\"success\""}) == 2; }, 30s))
        << worker.process->log();
    EXPECT_EQ(worker.metric("conveyor_jobs_completed_total", {"outcome=\"retry\""}), 0) << worker.process->log();
    EXPECT_NE(worker.process->log().find("job=group-lock-waiter type=diag.ledger correlation=- taken out of its group"),
              std::string::npos)
        << worker.process->log();
    EXPECT_EQ(database_.scalar("SELECT applied FROM conveyor.diag_ledger WHERE job_id = 'held-row'"), 1);
    EXPECT_EQ(database_.scalar("SELECT applied FROM conveyor.diag_ledger WHERE job_id = 'group-lock-waiter'"), 1);
    EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
    holder->wait(10s);
}

TEST_F(WorkerTest, ReadinessFollowsTheDatabaseAndJobsResumeWhenItIsBack) {
    auto worker = start_worker({}, "database-down");
    const auto services = (source_dir() / "deploy/local/services").string();
    ASSERT_EQ(run_command({services, "stop", "postgres"}, 60s).first, 0);
    const bool unready = eventually([&] { return !worker.ready(); }, 15s);
    broker_.publish(Broker::job("diag.ledger", "{}", "while-down"));
    ASSERT_EQ(run_command({services, "start", "postgres"}, 60s).first, 0);
    ASSERT_TRUE(unready) << "/readyz stayed 200 with the database stopped";
    ASSERT_TRUE(eventually([&] { return worker.ready(); }, 15s)) << worker.process->log();
    ASSERT_TRUE(eventually([&] { return database_.scalar("SELECT count(*) FROM conveyor.diag_ledger") == 1; }, 60s))
        << worker.process->log();
    EXPECT_EQ(database_.scalar("SELECT applied FROM conveyor.diag_ledger WHERE job_id = 'while-down'"), 1);
    EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
}

}  // namespace
}  // namespace conveyor::testing
