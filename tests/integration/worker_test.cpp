#include <signal.h>

#include <fstream>
#include <set>

#include "local_servers.hpp"
#include "worker_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

TEST_F(WorkerTest, ProcessesTenThousandNoopJobsExactlyOnce) {
    auto worker = start_worker({"--concurrency", "100"}, "ten-thousand");
    run_cli({"enqueue", "diag.noop", "--count", "10000", "--no-progress"});
    ASSERT_TRUE(eventually([&] { return worker.succeeded() >= 10000; }, 120s))
        << "succeeded: " << worker.succeeded() << "\n"
        << worker.process->log();
    // Give a duplicate delivery time to show up before counting.
    std::this_thread::sleep_for(1s);
    const auto metrics = worker.metrics();
    EXPECT_EQ(metric_sum(metrics, "conveyor_jobs_started_total", {"type=\"diag.noop\""}), 10000);
    EXPECT_EQ(metric_sum(metrics, "conveyor_jobs_completed_total", {"outcome=\"success\""}), 10000);
    EXPECT_EQ(metric_sum(metrics, "conveyor_jobs_completed_total", {"outcome=\"dead_letter\""}), 0);
    EXPECT_EQ(metric_sum(metrics, "conveyor_job_queue_wait_seconds_count"), 10000);
    EXPECT_EQ(metric_sum(metrics, "conveyor_jobs_in_flight"), 0);
    EXPECT_EQ(metric_sum(metrics, "conveyor_broker_connected"), 1);
    EXPECT_EQ(broker_.ready("conveyor.diag"), 0U);
    EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
    EXPECT_EQ(http_get(worker.port, "/healthz")->first, 200U);
}

TEST_F(WorkerTest, SpansAreExportedInBatchesAndAReceiverThatFailsOrStallsNeverHoldsUpAJob) {
    OtlpReceiver receiver;
    // Every request waits 2 s and the first 5 fail: with a queue of 50 spans, most of 2,000 jobs' spans find it full.
    receiver.control(R"({"latency_ms": 2000, "fail_next": 5})");
    auto worker = start_worker({"--otlp-endpoint", receiver.url(), "--otlp-queue", "50"}, "otlp-stalled");
    run_cli({"enqueue", "diag.noop", "--count", "2000", "--no-progress"});
    ASSERT_TRUE(eventually([&] { return worker.succeeded() >= 2000; }, 60s)) << worker.process->log();
    EXPECT_GT(worker.metric("conveyor_trace_spans_dropped_total", {"reason=\"queue_full\""}), 1000);
    ASSERT_TRUE(eventually(
        [&] { return worker.metric("conveyor_trace_spans_dropped_total", {"reason=\"export_failed\""}) > 0; }, 30s));
    // The receiver recovers, and spans flow again: each batch at most the queue's 50.
    receiver.control(R"({"latency_ms": 0, "fail_next": 0})");
    run_cli({"enqueue", "diag.noop", "--count", "20", "--no-progress"});
    ASSERT_TRUE(eventually([&] { return worker.metric("conveyor_trace_spans_exported_total") >= 20; }, 30s))
        << worker.process->log();
    EXPECT_EQ(receiver.stat("/rejected"), 0);
    const auto log = worker.process->log();
    EXPECT_NE(log.find("spans are dropped until it recovers"), std::string::npos) << log;
    EXPECT_NE(log.find("accepts spans again"), std::string::npos) << log;
}

TEST_F(WorkerTest, MetricsExposeEveryNameOfTheContract) {
    auto worker = start_worker({}, "metric-names");
    run_cli({"enqueue", "diag.fail", "--payload", R"({"times": 1, "permanent": true})"});
    ASSERT_TRUE(eventually([&] { return worker.metric("conveyor_publish_confirm_seconds_count") >= 1; }, 30s));
    const auto metrics = worker.metrics();
    const int checked = expect_metric_names(metrics, source_dir() / "tests/integration/worker_metric_names.txt");
    EXPECT_GE(checked, 7);
    EXPECT_NE(metrics.find(R"(conveyor_publish_confirm_seconds_count{exchange="amq.default"} 1)"), std::string::npos)
        << metrics;
}

TEST_F(WorkerTest, MalformedMessagesAreDeadLetteredWithTheirReasonWhileWorkContinues) {
    auto worker = start_worker({"--max-message-bytes", "1024"}, "malformed");
    broker_.publish(Broker::job("diag.noop", "this is not json", "bad-json"));
    broker_.publish(Broker::job("diag.noop", "[1, 2, 3]", "not-object"));
    broker_.publish(Broker::job("diag.nosuchjob", "{}", "unknown-type"));
    broker_.publish(Broker::job("diag.noop", R"({"pad": ")" + std::string(2000, 'x') + R"("})", "too-large"));
    auto no_id = Broker::job("diag.noop", "{}", "x");
    no_id.properties.message_id.clear();
    broker_.publish(std::move(no_id));
    broker_.publish(Broker::job("diag.fail", R"({"permanent": true})", "permanent"));
    broker_.publish(Broker::job("diag.sleep", R"({"ms": "soon"})", "bad-payload"));
    broker_.publish(Broker::job("diag.noop", "{}", "good"));

    const auto dead = broker_.take("conveyor.diag.dlq", 7, 30s);
    ASSERT_EQ(dead.size(), 7U) << worker.process->log();
    std::map<std::string, std::string> reasons;
    for (const auto& letter : dead) {
        const auto id = letter.message.properties.message_id.empty() ? "(none)" : letter.message.properties.message_id;
        reasons[id] = header_text(letter, "x-conveyor-reason");
        EXPECT_FALSE(header_text(letter, "x-conveyor-error").empty()) << id;
        EXPECT_FALSE(header_text(letter, "x-conveyor-failed-at").empty()) << id;
        EXPECT_FALSE(header_text(letter, "x-conveyor-worker").empty()) << id;
        EXPECT_EQ(letter.message.routing_key, "conveyor.diag.dlq") << id;
        if (id == "bad-json") {
            EXPECT_EQ(letter.message.body, "this is not json") << "the original body must survive";
            EXPECT_EQ(header_text(letter, "x-conveyor-original-routing-key"), "diag.noop");
            EXPECT_EQ(letter.message.properties.content_type, "application/json");
        }
    }
    const std::map<std::string, std::string> expected{
        {"bad-json", "bad_json"},           {"not-object", "invalid_payload"}, {"unknown-type", "unknown_type"},
        {"too-large", "too_large"},         {"(none)", "invalid_envelope"},    {"permanent", "permanent_failure"},
        {"bad-payload", "invalid_payload"},
    };
    EXPECT_EQ(reasons, expected);
    ASSERT_TRUE(eventually([&] { return worker.succeeded() == 1; }, 10s)) << worker.process->log();
    EXPECT_TRUE(worker.process->running());
    EXPECT_EQ(broker_.ready("conveyor.diag"), 0U);
}

TEST_F(WorkerTest, AJobInFlightWhenTheWorkerIsKilledIsRedeliveredToASecondWorker) {
    auto first = start_worker({}, "killed-first");
    broker_.publish(Broker::job("diag.sleep", R"({"ms": 3000})", "survivor"));
    // Jobs delivered after it finish first: acknowledging them must not acknowledge the survivor too.
    for (int i = 0; i < 50; ++i) {
        broker_.publish(Broker::job("diag.noop", "{}"));
    }
    ASSERT_TRUE(
        eventually([&] { return first.succeeded() == 50 && first.metric("conveyor_jobs_in_flight") == 1; }, 10s));
    std::this_thread::sleep_for(200ms);  // let the acks reach the broker
    first.process->signal(SIGKILL);
    ASSERT_EQ(first.process->wait(10s), 128 + SIGKILL);

    auto second = start_worker({"--log-level", "debug"}, "killed-second");
    ASSERT_TRUE(eventually([&] { return second.succeeded() == 1; }, 20s)) << second.process->log();
    const auto log = second.process->log();
    EXPECT_NE(log.find("job=survivor type=diag.sleep correlation=- redelivered"), std::string::npos) << log;
    EXPECT_EQ(broker_.ready("conveyor.diag"), 0U);
    EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
}

TEST_F(WorkerTest, WorkersNeededRisesWithTheBacklog) {
    auto worker = start_worker({"--concurrency", "4", "--heartbeat-interval", "1s"}, "workers-needed");
    // 2,000 jobs of 100 ms for 4 slots, which settle at most 40 a second. The first estimate comes after 30 s of
    // history: by then at least 800 still wait. At least 40/s x 0.1 s = 4 slots keep up and 800 x 0.1 s / 60 s
    // = 1.3 more clear the backlog in a minute: two workers. At most (40/s + 2,000 in 30 s) x 0.5 s +
    // 2,000 x 0.5 s / 60 s = 70 slots, 18 workers, even with p95 in the histogram's 0.25-0.5 s bucket.
    publish_sleeps(2000, 100);
    ASSERT_TRUE(eventually([&] { return worker.metric("conveyor_workers_needed") > 0; }, 45s)) << worker.process->log();
    const auto needed = worker.metric("conveyor_workers_needed");
    EXPECT_GE(needed, 2);
    EXPECT_LE(needed, 18);
    // The heartbeat carries the estimate to the console (which has no Prometheus to ask).
    const auto recorded = [&] {
        return database_.scalar(
            "SELECT coalesce(workers_needed, 0) FROM conveyor.workers WHERE pid = $1::int ORDER BY started_at DESC "
            "LIMIT 1",
            {std::to_string(worker.process->pid())});
    };
    EXPECT_TRUE(eventually([&] { return recorded() >= 2; }, 5s)) << recorded();
    broker_.purge("conveyor.diag");
}

TEST_F(WorkerTest, SigtermFinishesTheJobsInFlightAndLosesNone) {
    auto worker = start_worker({"--concurrency", "200", "--shutdown-grace", "30s"}, "sigterm");
    publish_sleeps(300, 2000);
    ASSERT_TRUE(eventually([&] { return worker.metric("conveyor_jobs_in_flight") == 200; }, 20s))
        << "in flight: " << worker.metric("conveyor_jobs_in_flight");
    const auto signalled = std::chrono::steady_clock::now();
    worker.process->signal(SIGTERM);
    const auto status = worker.process->wait(30s);
    ASSERT_TRUE(status.has_value()) << "worker did not exit";
    EXPECT_EQ(*status, 0) << worker.process->log();
    EXPECT_LT(std::chrono::steady_clock::now() - signalled, 10s);
    const auto log = worker.process->log();
    EXPECT_NE(log.find("200 succeeded, 0 retried, 0 dead-lettered"), std::string::npos) << log;
    // The 100 jobs that never started are back in the queue (handed back through the delay ladder, or never
    // taken): none lost, none run.
    EXPECT_TRUE(eventually([&] { return broker_.ready("conveyor.diag") == 100U; }, 10s))
        << broker_.ready("conveyor.diag");
    EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
}

TEST_F(WorkerTest, GracePeriodOverRequeuesTheJobsStillRunning) {
    auto worker = start_worker({"--concurrency", "5", "--shutdown-grace", "1s"}, "grace");
    publish_sleeps(5, 20000);
    ASSERT_TRUE(eventually([&] { return worker.metric("conveyor_jobs_in_flight") == 5; }, 20s));
    worker.process->signal(SIGTERM);
    const auto status = worker.process->wait(15s);
    ASSERT_TRUE(status.has_value()) << "worker did not exit";
    EXPECT_EQ(*status, 0) << worker.process->log();
    EXPECT_NE(
        worker.process->log().find("0 succeeded, 0 retried, 0 dead-lettered, 0 duplicates, 0 deduplicated, 5 requeued"),
        std::string::npos)
        << worker.process->log();
    EXPECT_EQ(broker_.ready("conveyor.diag"), 5U);
}

TEST_F(WorkerTest, BadFlagsExitNonZeroWithAClearMessage) {
    auto [status, output] = run_command({(binary_dir() / "conveyor-worker").string(), "--concurrency", "zero"}, 10s);
    EXPECT_EQ(status, 2);
    EXPECT_NE(output.find("--concurrency"), std::string::npos) << output;
    auto [cli_status, cli_output] =
        run_command({(binary_dir() / "conveyor").string(), "enqueue", "diag.noop", "--payload", "{oops"}, 10s);
    EXPECT_EQ(cli_status, 2);
    EXPECT_NE(cli_output.find("not valid JSON"), std::string::npos) << cli_output;
}

TEST_F(WorkerTest, CliFailsCleanlyWhenTheBrokerIsUnreachable) {
    auto [status, output] = run_command({(binary_dir() / "conveyor").string(), "--amqp-url",
                                         "amqp://guest:guest@127.0.0.1:1/%2f", "enqueue", "diag.noop"},
                                        60s);
    EXPECT_EQ(status, 3) << output;
    EXPECT_NE(output.find("cannot reach the broker"), std::string::npos) << output;
    EXPECT_EQ(output.find("guest:guest"), std::string::npos) << "the password leaked: " << output;
}

}  // namespace
}  // namespace conveyor::testing
