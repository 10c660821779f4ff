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

}  // namespace
}  // namespace conveyor::testing
