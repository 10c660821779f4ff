// Cancelling a job wherever it is: running on one of several workers, queued behind a backlog, mid-transaction,
// not on record yet, or scheduled; from the CLI and the HTTP API.
#include <boost/json/parse.hpp>

#include "scheduler_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

double cancelled_on(const std::vector<WorkerUnderTest>& workers) {
    double total = 0;
    for (const auto& worker : workers) {
        total += worker.metric("conveyor_jobs_completed_total", {"outcome=\"cancelled\""});
    }
    return total;
}

class JobControlTest : public SchedulerFixture {
  protected:
    std::string cancel(std::vector<std::string> ids) {
        std::vector<std::string> args{"jobs", "cancel", "--pg-url", pg_url()};
        args.insert(args.end(), ids.begin(), ids.end());
        return run_cli(args);
    }

    std::string state_of(const std::string& job_id) {
        const auto rows = database_.query(
            "SELECT CASE state WHEN 'duplicate' THEN 'succeeded' ELSE state END FROM conveyor.job_events "
            "WHERE job_id = $1 ORDER BY recorded_at DESC, (state <> 'running') DESC LIMIT 1",
            {job_id});
        return rows.empty() ? std::string("(none)") : rows[0][0];
    }

    static void stop_all(std::vector<WorkerUnderTest>& workers) {
        for (auto& worker : workers) {
            worker.process->signal(SIGTERM);
        }
        for (auto& worker : workers) {
            EXPECT_EQ(worker.process->wait(30s), std::optional<int>(0)) << worker.process->log();
        }
    }
};

TEST_F(JobControlTest, ARunningJobIsCancelledOnWhicheverWorkerHoldsItWithinASecond) {
    std::vector<WorkerUnderTest> workers;
    workers.push_back(start_worker({"--name", "control-a"}, "control-a"));
    workers.push_back(start_worker({"--name", "control-b"}, "control-b"));
    broker_.publish(Broker::job("diag.sleep", R"({"ms": 60000})", "cancel-running"));
    ASSERT_TRUE(eventually(
        [&] {
            return workers[0].metric("conveyor_jobs_in_flight") + workers[1].metric("conveyor_jobs_in_flight") == 1;
        },
        10s));
    const auto asked = Clock::now();
    cancel({"cancel-running"});
    ASSERT_TRUE(eventually([&] { return cancelled_on(workers) == 1; }, 10s));
    const auto settled_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - asked).count();
    std::printf("{\"name\":\"cancel_running\",\"cli_to_settled_ms\":%lld}\n", static_cast<long long>(settled_ms));
    EXPECT_LT(settled_ms, 1000);
    ASSERT_TRUE(eventually([&] { return state_of("cancel-running") == "cancelled"; }, 5s))
        << state_of("cancel-running");
    // Neither retried nor dead-lettered.
    for (const auto& worker : workers) {
        EXPECT_EQ(worker.metric("conveyor_jobs_completed_total", {"outcome=\"retry\""}), 0);
    }
    EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
    stop_all(workers);
}

TEST_F(JobControlTest, AHundredJobsCancelledBehindABacklogNeverRun) {
    constexpr int kJobs = 200;
    std::vector<WorkerUnderTest> workers;
    workers.push_back(start_worker({"--concurrency", "5"}, "control-backlog"));
    std::vector<amqp::Message> jobs;
    std::vector<std::string> cancelled;
    for (int i = 0; i < kJobs; ++i) {
        jobs.push_back(Broker::job("diag.sleep", R"({"ms": 50})", fmt::format("backlog-{}", i)));
        if (i >= kJobs / 2) {
            cancelled.push_back(fmt::format("backlog-{}", i));
        }
    }
    broker_.publish_all(std::move(jobs));
    cancel(cancelled);
    ASSERT_TRUE(eventually([&] { return workers[0].succeeded() + cancelled_on(workers) == kJobs; }, 60s))
        << workers[0].process->log();
    EXPECT_EQ(cancelled_on(workers), kJobs / 2);
    EXPECT_EQ(workers[0].metric("conveyor_jobs_started_total"), kJobs / 2) << "a cancelled job ran";
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar(
                       "SELECT count(*) FROM conveyor.job_events WHERE state = 'cancelled' AND job_id "
                       "LIKE 'backlog-%' AND split_part(job_id, '-', 2)::int >= 100") == kJobs / 2;
        },
        5s));
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE state = 'succeeded' AND "
                               "split_part(job_id, '-', 2)::int >= 100"),
              0);
    stop_all(workers);
}

TEST_F(JobControlTest, ALedgerJobCancelledMidTransactionLeavesNoEffect) {
    std::vector<WorkerUnderTest> workers;
    workers.push_back(start_worker({}, "control-ledger"));
    broker_.publish(Broker::job("diag.ledger", R"({"ms": 5000})", "ledger-cancelled"));
    ASSERT_TRUE(eventually([&] { return workers[0].metric("conveyor_jobs_in_flight") == 1; }, 10s));
    // Inside its transaction: the ledger row is written and the transaction held open.
    std::this_thread::sleep_for(300ms);
    cancel({"ledger-cancelled"});
    ASSERT_TRUE(eventually([&] { return cancelled_on(workers) == 1; }, 5s)) << workers[0].process->log();
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE job_id = 'ledger-cancelled'"), 0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.inbox WHERE message_id = 'ledger-cancelled'"), 0);
    stop_all(workers);
}

TEST_F(JobControlTest, TheApiCancelsJobsNotOnRecordYetScheduledOrEndedAsTheContractSays) {
    auto scheduler = start_scheduler_with_tokens("control-api");
    std::vector<WorkerUnderTest> workers;
    workers.push_back(start_worker({}, "control-api-worker"));

    EXPECT_EQ(call_api(scheduler.port, "DELETE", "/v1/jobs/not-yet-1", "enqueue-secret").status, 403);
    const auto pending = call_api(scheduler.port, "DELETE", "/v1/jobs/not-yet-1", "admin-secret");
    ASSERT_EQ(pending.status, 202) << pending.body;
    EXPECT_EQ(boost::json::parse(pending.body).at("state").as_string(), "cancel_pending");
    // Published after the cancel: whichever worker takes it settles it without running it.
    broker_.publish(Broker::job("diag.noop", "{}", "not-yet-1"));
    ASSERT_TRUE(eventually([&] { return cancelled_on(workers) == 1; }, 10s));
    EXPECT_EQ(workers[0].metric("conveyor_jobs_started_total"), 0);
    ASSERT_TRUE(eventually([&] { return state_of("not-yet-1") == "cancelled"; }, 5s));
    const auto ended = call_api(scheduler.port, "DELETE", "/v1/jobs/not-yet-1", "admin-secret");
    EXPECT_EQ(ended.status, 409) << ended.body;

    const auto scheduled_id = run_cli({"enqueue", "diag.noop", "--in", "1h", "--pg-url", pg_url()});
    const auto id = scheduled_id.substr(0, scheduled_id.find('\n'));
    const auto scheduled = call_api(scheduler.port, "DELETE", "/v1/jobs/" + id, "admin-secret");
    ASSERT_EQ(scheduled.status, 200) << scheduled.body;
    EXPECT_EQ(boost::json::parse(scheduled.body).at("state").as_string(), "cancelled");
    EXPECT_EQ(database_.query("SELECT state FROM conveyor.scheduled_jobs WHERE id = $1::uuid", {id})[0][0],
              "cancelled");
    const auto shown = call_api(scheduler.port, "GET", "/v1/jobs/" + id, "admin-secret");
    EXPECT_EQ(boost::json::parse(shown.body).at("state").as_string(), "cancelled") << shown.body;
    stop_all(workers);
    stop(scheduler);
}

}  // namespace
}  // namespace conveyor::testing
