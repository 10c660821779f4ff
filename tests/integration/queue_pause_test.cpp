// Pausing a family or one job type of it, fleet-wide and durably, from the CLI and the HTTP API: nothing starts
// more than a second after the command, nothing is requeued or dead-lettered, no attempt is used, and after the
// resume every job runs exactly once.
#include <array>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include "scheduler_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

class QueuePauseTest : public SchedulerFixture {
  protected:
    static double sum(const std::vector<WorkerUnderTest>& workers, const std::string& name,
                      const std::vector<std::string>& labels = {}) {
        double total = 0;
        for (const auto& worker : workers) {
            total += worker.metric(name, labels);
        }
        return total;
    }

    static void stop_all(std::vector<WorkerUnderTest>& workers) {
        for (auto& worker : workers) {
            worker.process->signal(SIGTERM);
        }
        for (auto& worker : workers) {
            EXPECT_EQ(worker.process->wait(30s), std::optional<int>(0)) << worker.process->log();
        }
    }

    /// Nothing held back was retried, requeued into the delivery limit or dead-lettered; every attempt was the first.
    void expect_no_attempt_used(const std::vector<WorkerUnderTest>& workers) {
        EXPECT_EQ(sum(workers, "conveyor_jobs_completed_total", {"outcome=\"retry\""}), 0);
        EXPECT_EQ(sum(workers, "conveyor_jobs_completed_total", {"outcome=\"dead_letter\""}), 0);
        EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
        EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE attempt > 1"), 0);
    }
};

TEST_F(QueuePauseTest, APausedFamilyStartsNothingASecondAfterTheCommandAndEveryJobRunsOnceAfterTheResume) {
    constexpr int kJobs = 10'000;
    std::vector<WorkerUnderTest> workers;
    for (const auto* name : {"pause-a", "pause-b"}) {
        workers.push_back(start_worker({"--name", name, "--concurrency", "20", "--paused-recheck", "2s"}, name));
    }
    std::vector<amqp::Message> jobs;
    jobs.reserve(kJobs);
    for (int i = 0; i < kJobs; ++i) {
        jobs.push_back(Broker::job("diag.ledger", R"({"ms": 2})", fmt::format("paused-{}", i)));
    }
    broker_.publish_all(std::move(jobs));
    ASSERT_TRUE(eventually([&] { return sum(workers, "conveyor_jobs_started_total") >= 1000; }, 60s));

    run_cli({"queues", "pause", "diag", "--pg-url", pg_url()});
    const auto paused_at = database_.query(
        "SELECT changed_at::text FROM conveyor.queue_pauses WHERE family = 'diag' AND job_type = ''")[0][0];
    std::this_thread::sleep_for(1s);
    const auto started_after_a_second = sum(workers, "conveyor_jobs_started_total");
    std::this_thread::sleep_for(3s);
    EXPECT_EQ(sum(workers, "conveyor_jobs_started_total"), started_after_a_second) << "a job started while paused";
    const auto counts = broker_.counts("conveyor.diag");
    EXPECT_GT(counts.messages, 0U) << "the backlog ran out before the pause";
    EXPECT_EQ(counts.consumers, 0U) << "a paused family is not consumed";
    EXPECT_EQ(sum(workers, "conveyor_queue_paused", {"queue=\"conveyor.diag\""}), 2);
    const auto listed = run_cli({"queues", "--families", "diag", "--pg-url", pg_url()});
    EXPECT_NE(listed.find("yes (since"), std::string::npos) << listed;

    run_cli({"queues", "resume", "diag", "--pg-url", pg_url()});
    ASSERT_TRUE(
        eventually([&] { return database_.scalar("SELECT count(*) FROM conveyor.diag_ledger") == kJobs; }, 120s))
        << database_.scalar("SELECT count(*) FROM conveyor.diag_ledger");
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE applied <> 1"), 0);
    EXPECT_EQ(database_.scalar(fmt::format("SELECT count(*) FROM conveyor.job_events WHERE started_at > '{}'::"
                                           "timestamptz + interval '1 second' AND started_at < (SELECT changed_at "
                                           "FROM conveyor.queue_pauses WHERE family = 'diag' AND job_type = '')",
                                           paused_at)),
              0)
        << "jobs started more than a second after the pause and before the resume";
    EXPECT_EQ(sum(workers, "conveyor_queue_paused", {"queue=\"conveyor.diag\""}), 0);
    ASSERT_TRUE(eventually(
        [&] { return sum(workers, "conveyor_jobs_completed_total", {"outcome=\"success\""}) == kJobs; }, 10s));
    expect_no_attempt_used(workers);
    std::printf("{\"name\":\"pause_backlog\",\"jobs\":%d,\"started_before_pause\":%.0f,\"parked\":%.0f}\n", kJobs,
                started_after_a_second, sum(workers, "conveyor_jobs_parked_total"));
    stop_all(workers);
}

TEST_F(QueuePauseTest, APausedTypeIsParkedWhileTheOtherTypesOfItsQueueRun) {
    constexpr int kEach = 50;
    auto scheduler = start_scheduler_with_tokens("pause-api");
    std::vector<WorkerUnderTest> workers;
    workers.push_back(start_worker({"--paused-recheck", "1s"}, "pause-type"));

    EXPECT_EQ(call_api(scheduler.port, "POST", "/v1/queues/diag/pause?type=diag.sleep", "enqueue-secret").status, 403);
    EXPECT_EQ(call_api(scheduler.port, "POST", "/v1/queues/diag/pause?type=orders.place", "admin-secret").status, 400);
    EXPECT_EQ(call_api(scheduler.port, "POST", "/v1/queues/mail/pause", "admin-secret").status, 400);
    const auto paused = call_api(scheduler.port, "POST", "/v1/queues/diag/pause?type=diag.sleep", "admin-secret");
    ASSERT_EQ(paused.status, 200) << paused.body;
    EXPECT_EQ(boost::json::parse(paused.body).at("changed").as_bool(), true);
    const auto again = call_api(scheduler.port, "POST", "/v1/queues/diag/pause?type=diag.sleep", "admin-secret");
    EXPECT_EQ(boost::json::parse(again.body).at("changed").as_bool(), false) << again.body;
    const auto queues = boost::json::parse(call_api(scheduler.port, "GET", "/v1/queues", "admin-secret").body);
    for (const auto& queue : queues.at("queues").as_array()) {
        if (queue.at("family") == "diag") {
            EXPECT_EQ(queue.at("paused").as_bool(), false);
            EXPECT_EQ(boost::json::serialize(queue.at("paused_types")), R"(["diag.sleep"])");
        }
    }
    ASSERT_TRUE(eventually([&] { return workers[0].metric("conveyor_job_types_paused") == 1; }, 5s));

    std::vector<amqp::Message> jobs;
    for (int i = 0; i < kEach; ++i) {
        jobs.push_back(Broker::job("diag.sleep", R"({"ms": 1})", fmt::format("held-{}", i)));
        jobs.push_back(Broker::job("diag.noop", "{}", fmt::format("runs-{}", i)));
    }
    broker_.publish_all(std::move(jobs));
    ASSERT_TRUE(eventually([&] { return workers[0].succeeded() == kEach; }, 20s)) << workers[0].process->log();
    // Several rounds through the ladder: each finds its type still paused.
    ASSERT_TRUE(eventually([&] { return workers[0].metric("conveyor_jobs_parked_total") >= 2 * kEach; }, 20s));
    EXPECT_EQ(workers[0].metric("conveyor_jobs_started_total", {"type=\"diag.sleep\""}), 0);
    EXPECT_EQ(workers[0].succeeded(), kEach);

    ASSERT_EQ(call_api(scheduler.port, "POST", "/v1/queues/diag/resume?type=diag.sleep", "admin-secret").status, 200);
    ASSERT_TRUE(eventually([&] { return workers[0].succeeded() == 2 * kEach; }, 20s)) << workers[0].process->log();
    expect_no_attempt_used(workers);
    stop_all(workers);
    stop(scheduler);
}

/// The jobs wait in their priority bands (a value the contract does not know is normal), and the pause holds
/// every band.
TEST_F(QueuePauseTest, APauseOnRecordHoldsForAWorkerStartedAfterItInEveryBand) {
    constexpr int kJobs = 20;
    const auto said = run_cli({"queues", "pause", "diag", "--pg-url", pg_url(), "--json"});
    EXPECT_EQ(boost::json::parse(said).at("paused").as_bool(), true) << said;
    const std::array<std::string, 4> priorities{"high", "low", "", "urgent"};
    std::vector<amqp::Message> jobs;
    for (int i = 0; i < kJobs; ++i) {
        auto job = Broker::job("diag.noop", "{}");
        if (const auto& priority = priorities[static_cast<std::size_t>(i) % priorities.size()]; !priority.empty()) {
            amqp::set_header(job.properties.headers, topology::kPriorityHeader, priority);
        }
        jobs.push_back(std::move(job));
    }
    broker_.publish_all(std::move(jobs));
    std::vector<WorkerUnderTest> workers;
    workers.push_back(start_worker({}, "pause-later"));
    std::this_thread::sleep_for(2s);
    EXPECT_EQ(workers[0].metric("conveyor_jobs_started_total"), 0);
    EXPECT_EQ(workers[0].metric("conveyor_queue_paused", {"queue=\"conveyor.diag\""}), 1);
    EXPECT_EQ(broker_.counts("conveyor.diag.high").messages, static_cast<std::uint32_t>(kJobs / 4));
    EXPECT_EQ(broker_.counts("conveyor.diag.low").messages, static_cast<std::uint32_t>(kJobs / 4));
    EXPECT_EQ(broker_.counts("conveyor.diag").messages, static_cast<std::uint32_t>(kJobs / 2));

    run_cli({"queues", "resume", "diag", "--pg-url", pg_url()});
    ASSERT_TRUE(eventually([&] { return workers[0].succeeded() == kJobs; }, 10s)) << workers[0].process->log();
    expect_no_attempt_used(workers);
    stop_all(workers);
}

}  // namespace
}  // namespace conveyor::testing
