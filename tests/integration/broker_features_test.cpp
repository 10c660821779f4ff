#include <signal.h>

#include <cstdlib>
#include <fstream>

#include "scheduler_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

std::string required_env(const char* name) {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') {
        ADD_FAILURE() << name << " is not set; start the stack with `eval \"$(deploy/local/services start)\"`";
        return {};
    }
    return value;
}

TEST_F(WorkerTest, RunsJobsOverTlsWithTheBrokersCertificateVerified) {
    const auto url = required_env("CONVEYOR_AMQPS_URL");
    const auto ca = required_env("CONVEYOR_AMQP_CA_FILE");
    ASSERT_FALSE(url.empty() || ca.empty());
    auto worker = start_worker({"--amqp-url", url, "--amqp-ca-file", ca}, "tls");
    broker_.publish(Broker::job("diag.noop", "{}"));
    ASSERT_TRUE(eventually([&] { return worker.succeeded() == 1; }, 20s)) << worker.process->log();
    EXPECT_NE(worker.process->log().find("connected to amqps://guest:***@localhost:5671"), std::string::npos)
        << worker.process->log();
}

TEST_F(WorkerTest, RefusesABrokerCertificateItsCaDidNotSign) {
    const auto url = required_env("CONVEYOR_AMQPS_URL");
    ASSERT_FALSE(url.empty());
    // A real CA bundle, but not the one that signed the local broker's certificate.
    auto worker = start_worker({"--amqp-url", url, "--amqp-ca-file", "/etc/ssl/certs/ca-certificates.crt"},
                               "tls-untrusted", false);
    ASSERT_TRUE(eventually(
        [&] { return worker.process->log().find("SSL peer cert verification failed") != std::string::npos; }, 20s))
        << worker.process->log();
    EXPECT_FALSE(worker.ready());
    auto readiness = http_get(worker.port, "/readyz");
    ASSERT_TRUE(readiness.has_value());
    EXPECT_EQ(readiness->first, 503U);
}

TEST_F(WorkerTest, PublishesWaitWhileTheBrokerBlocksThemAndCompleteAfterwards) {
    MemoryAlarm alarm;
    const auto log = std::filesystem::temp_directory_path() / "conveyor-blocked-enqueue.log";
    // Paced, so that most publishes are issued after the broker said it blocks them: they must wait in order.
    Process enqueue(binary_dir() / "conveyor",
                    {"--amqp-url", amqp_url(), "enqueue", "diag.noop", "--count", "20", "--rate", "10"}, log);
    std::this_thread::sleep_for(4s);
    EXPECT_TRUE(enqueue.running()) << "enqueue should wait while publishing is blocked:\n" << enqueue.log();
    alarm.lift();
    const auto status = enqueue.wait(60s);
    ASSERT_TRUE(status.has_value()) << "enqueue still waiting after the alarm cleared:\n" << enqueue.log();
    EXPECT_EQ(*status, 0) << enqueue.log();
    EXPECT_EQ(broker_.ready("conveyor.diag"), 20U);
}

/// The longest stretch over `span` in which the scheduled job `correlation_id` was locked, probed every 100 ms
/// with FOR UPDATE NOWAIT from a session of the test's own.
std::chrono::milliseconds longest_lock(Database& database, const std::string& correlation_id,
                                       std::chrono::seconds span) {
    const auto end = std::chrono::steady_clock::now() + span;
    std::chrono::milliseconds longest{0};
    std::optional<std::chrono::steady_clock::time_point> locked_since;
    while (std::chrono::steady_clock::now() < end) {
        const auto now = std::chrono::steady_clock::now();
        try {
            database.query("SELECT id FROM conveyor.scheduled_jobs WHERE correlation_id = $1 FOR UPDATE NOWAIT",
                           {correlation_id});
            locked_since.reset();
        } catch (const std::exception&) {
            locked_since = locked_since.value_or(now);
            longest = std::max(longest, std::chrono::duration_cast<std::chrono::milliseconds>(now - *locked_since));
        }
        std::this_thread::sleep_for(100ms);
    }
    return longest;
}

TEST_F(SchedulerFixture, TheRelayLetsGoOfItsRowsWhileTheBrokerBlocksPublishing) {
    database_.query("TRUNCATE conveyor.scheduled_jobs");
    auto scheduler = start_scheduler({"--publish-timeout", "2s"}, "relay-blocked");
    {
        MemoryAlarm alarm;
        database_.query("SELECT conveyor.enqueue('diag.noop', '{}'::jsonb, correlation_id => 'relay-blocked')");
        // The relay claims the row and publishes; the blocked broker never confirms. Without a deadline the row
        // stayed locked for as long as the alarm lasted.
        const auto longest = longest_lock(database_, "relay-blocked", 8s);
        EXPECT_LT(longest, 3500ms) << scheduler.process->log();
        EXPECT_NE(scheduler.process->log().find("before its deadline"), std::string::npos) << scheduler.process->log();
        EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.scheduled_jobs WHERE state = 'pending'"), 1);
    }
    EXPECT_TRUE(eventually(
        [&] { return database_.scalar("SELECT count(*) FROM conveyor.scheduled_jobs WHERE state = 'published'") == 1; },
        30s))
        << scheduler.process->log();
    // Published once the alarm was over; a publish the broker had read before it timed out may arrive as well, with
    // the same message id, which the job's inbox absorbs.
    EXPECT_TRUE(eventually([&] { return broker_.ready("conveyor.diag") >= 1; }, 10s));
    EXPECT_LE(broker_.ready("conveyor.diag"), 2U);
    stop(scheduler);
}

}  // namespace
}  // namespace conveyor::testing

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

TEST_F(WorkerTest, ShutdownStaysBoundedWhenTheBrokerStalls) {
    auto worker = start_worker({"--concurrency", "10", "--shutdown-grace", "2s"}, "stalled-broker");
    publish_sleeps(10, 20000);
    ASSERT_TRUE(eventually([&] { return worker.metric("conveyor_jobs_in_flight") == 10; }, 20s));
    const auto signalled = std::chrono::steady_clock::now();
    {
        FrozenBroker frozen;
        ASSERT_TRUE(frozen.frozen()) << "no pid file for the local broker (deploy/local/services state dir)";
        worker.process->signal(SIGTERM);
        const auto status = worker.process->wait(20s);
        ASSERT_TRUE(status.has_value()) << "the worker hung on the stalled broker:\n" << worker.process->log();
        EXPECT_EQ(*status, 0) << worker.process->log();
    }
    // Grace (2 s) plus a bounded close of each connection; without the bounds this took over 20 s.
    EXPECT_LT(std::chrono::steady_clock::now() - signalled, 12s);
    EXPECT_NE(worker.process->log().find("10 requeued"), std::string::npos) << worker.process->log();
    // Nothing was lost: the broker requeues the unacknowledged jobs once it runs again.
    Broker after;
    after.connect();
    EXPECT_TRUE(eventually([&] { return after.ready("conveyor.diag") == 10; }, 30s))
        << "ready: " << after.ready("conveyor.diag");
}

/// A queue that exists with other arguments (made by an earlier version, or by hand) cannot be changed in place: the
/// worker uses it as it is instead of failing every connection, and `conveyor topology declare` says what differs
/// and what to do.
TEST_F(WorkerTest, AQueueWithOtherArgumentsIsUsedAsItIsAndTopologyDeclareSaysWhatToDo) {
    const char* management = std::getenv("CONVEYOR_RABBITMQ_MANAGEMENT_URL");
    const std::string delete_dlq = fmt::format("{}/api/queues/%2f/conveyor.diag.dlq",
                                               management != nullptr ? management : "http://127.0.0.1:15672");
    const auto remove_dlq = [&] {
        auto [status, output] =
            run_command({"/usr/bin/curl", "-sS", "-f", "-u", "guest:guest", "-X", "DELETE", delete_dlq}, 20s);
        ASSERT_EQ(status, 0) << output;
    };
    remove_dlq();
    {
        amqp::ConnectionSettings settings;
        settings.url = amqp::Url::parse(amqp_url());
        settings.max_connect_attempts = 3;
        amqp::Topology by_hand;
        by_hand.queues.push_back({"conveyor.diag.dlq",
                                  {{"x-queue-type", std::string("quorum")},
                                   {"x-quorum-initial-group-size", topology::kQuorumGroupSize},
                                   {"x-delivery-limit", std::int64_t{5}}}});
        amqp::Connection connection(settings, by_hand);
        connection.start();
        ASSERT_TRUE(eventually([&] { return connection.connected(); }, 10s)) << connection.last_error();
        connection.stop();
    }
    auto [status, output] = run_command(
        {(binary_dir() / "conveyor").string(), "--amqp-url", amqp_url(), "topology", "declare", "--families", "diag"},
        60s);
    EXPECT_EQ(status, 1) << output;
    EXPECT_NE(output.find("unchanged conveyor.diag.dlq (other arguments)"), std::string::npos) << output;
    EXPECT_NE(output.find("inequivalent arg"), std::string::npos) << output;
    EXPECT_NE(output.find("let it drain, delete it, and declare again"), std::string::npos) << output;

    auto worker = start_worker({"--concurrency", "4"}, "queue-with-other-arguments");
    broker_.publish(Broker::job("diag.noop", "{}"));
    EXPECT_TRUE(eventually([&] { return worker.succeeded() >= 1; }, 20s)) << worker.process->log();
    EXPECT_NE(worker.process->log().find("exist with other arguments than this version declares"), std::string::npos)
        << worker.process->log();
    worker.process->signal(SIGTERM);
    EXPECT_EQ(worker.process->wait(20s), std::optional<int>(0));
    remove_dlq();
    run_cli({"topology", "declare", "--families", "diag"});
}

/// A retry waits in the delay ladder and comes back to the band it left: the ladder keeps the header, and its exit
/// goes through the family's bands exchange.
TEST_F(WorkerTest, AHighPriorityJobIsRetriedInTheHighBand) {
    auto worker = start_worker({"--retry", "diag.fail=attempts:3,base:1s,cap:1s"}, "priority-retry");
    auto job = Broker::job("diag.fail", R"({"times": 1})", "high-fails-once");
    amqp::set_header(job.properties.headers, topology::kPriorityHeader, std::string("high"));
    broker_.publish(std::move(job));
    ASSERT_TRUE(eventually([&] { return worker.succeeded() == 1; }, 20s)) << worker.process->log();
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar("SELECT count(DISTINCT attempt) FROM conveyor.job_events WHERE job_id = $1",
                                    {"high-fails-once"}) == 2;
        },
        10s));
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE job_id = $1 AND queue <> $2",
                               {"high-fails-once", "conveyor.diag.high"}),
              0);
    EXPECT_EQ(broker_.counts("conveyor.diag").messages, 0U);
}

/// Among the jobs a worker holds (its prefetch), a free coroutine prefers the high band: a high job does not wait
/// behind the normal ones taken before it, and low ones still get their share of the starts under a normal backlog,
/// long before it ends.
TEST_F(WorkerTest, HighJobsOvertakeTheNormalJobsTheWorkerHoldsAndLowOnesStillStart) {
    constexpr int kNormal = 150;
    constexpr int kEach = 10;
    constexpr int kPrefetch = 50;
    auto worker = start_worker({"--concurrency", "1", "--prefetch", std::to_string(kPrefetch)}, "priority-preference");
    publish_sleeps(kNormal, 10);
    // Past its first starts the worker holds a full prefetch of normal jobs.
    ASSERT_TRUE(eventually([&] { return worker.metric("conveyor_jobs_started_total") >= 3; }, 20s));
    std::vector<amqp::Message> urgent_and_not;
    for (int i = 0; i < kEach; ++i) {
        for (const auto* band : {"high", "low"}) {
            auto job = Broker::job("diag.noop", "{}", fmt::format("{}-{}", band, i));
            amqp::set_header(job.properties.headers, topology::kPriorityHeader, std::string(band));
            urgent_and_not.push_back(std::move(job));
        }
    }
    const auto started_before = static_cast<std::int64_t>(worker.metric("conveyor_jobs_started_total"));
    broker_.publish_all(std::move(urgent_and_not));
    ASSERT_TRUE(eventually([&] { return worker.succeeded() == kNormal + 2 * kEach; }, 60s)) << worker.process->log();
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE state = 'succeeded'") ==
                   kNormal + 2 * kEach;
        },
        10s));
    // One coroutine: the start order is the order of started_at, which each job's terminal event carries.
    const auto last_start = [&](const std::string& prefix) {
        return database_.scalar(
            "SELECT max(rank) FROM (SELECT job_id, row_number() OVER (ORDER BY started_at) AS rank "
            "FROM conveyor.job_events WHERE state = 'succeeded') AS starts WHERE job_id LIKE $1",
            {prefix + "%"});
    };
    // First in, first out, the high jobs would start after the prefetch of normal jobs held before them; with
    // weights 6:3:1 they take 6 of every 9 or 10 starts, and a few normal ones start while they travel the broker.
    EXPECT_LE(last_start("high-"), started_before + kEach * 10 / 6 + 10)
        << "started before the publish: " << started_before;
    // Strictly preferred, low jobs would wait for the whole normal backlog; at 1 in 4 starts they end long before.
    EXPECT_LE(last_start("low-"), kNormal + 2 * kEach - kPrefetch);
}

/// Coroutines reserved for the high band: long normal jobs hold every other one, and a high job still starts at once.
TEST_F(WorkerTest, ACoroutineReservedForHighPriorityRunsAHighJobWhileLongJobsHoldTheRest) {
    auto worker = start_worker({"--concurrency", "3", "--high-priority-reserved", "1"}, "priority-reserved");
    publish_sleeps(6, 4000);
    ASSERT_TRUE(eventually([&] { return worker.metric("conveyor_jobs_in_flight") == 2; }, 20s));
    auto urgent = Broker::job("diag.noop", "{}", "reserved-high");
    amqp::set_header(urgent.properties.headers, topology::kPriorityHeader, std::string("high"));
    broker_.publish(std::move(urgent));
    ASSERT_TRUE(eventually([&] { return worker.succeeded() >= 1; }, 20s)) << worker.process->log();
    // It ran while both long jobs still ran: without the reserved coroutine it would have waited for one of them.
    EXPECT_EQ(worker.metric("conveyor_jobs_completed_total", {"type=\"diag.noop\"", "outcome=\"success\""}), 1);
    EXPECT_EQ(worker.metric("conveyor_jobs_completed_total", {"type=\"diag.sleep\""}), 0);
    EXPECT_EQ(worker.metric("conveyor_jobs_in_flight"), 2);
}

}  // namespace
}  // namespace conveyor::testing
