// conveyor-scheduler against the real broker and database: the relay of conveyor.scheduled_jobs (transactional
// enqueue, delayed jobs, a relay killed mid-batch) and cron schedules fired by two replicas, one of them killed.
#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "conveyor/core/pg.hpp"
#include "scheduler_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

class SchedulerTest : public SchedulerFixture {
  protected:
    void SetUp() override {
        SchedulerFixture::SetUp();
        database_.query("TRUNCATE conveyor.scheduled_jobs, conveyor.schedules, conveyor.dead_letters");
    }

    std::int64_t count(const std::string& where) {
        return database_.scalar("SELECT count(*) FROM conveyor.scheduled_jobs WHERE " + where);
    }

    /// Message ids of everything in conveyor.diag, with how often each arrived.
    std::map<std::string, int> drain_diag_queue(std::size_t expected, std::chrono::milliseconds timeout) {
        std::map<std::string, int> ids;
        for (const auto& delivery : broker_.take("conveyor.diag", expected, timeout)) {
            ++ids[delivery.message.properties.message_id];
        }
        // Anything beyond the expected count (duplicates) arrives with the rest; take it too.
        for (const auto& delivery : broker_.take("conveyor.diag", expected, 1s)) {
            ++ids[delivery.message.properties.message_id];
        }
        return ids;
    }
};

TEST_F(SchedulerTest, RolledBackEnqueuesNothingAndCommittedOnesArriveOnceWithTheirIds) {
    auto scheduler = start_scheduler({}, "scheduler-transactional");
    // Another system's transaction that enqueues and then fails.
    EXPECT_THROW(database_.query("DO $$ BEGIN PERFORM conveyor.enqueue('diag.noop', '{}'::jsonb); "
                                 "RAISE EXCEPTION 'the business transaction failed'; END $$"),
                 pg::Error);
    const auto committed = database_.query(
        "SELECT conveyor.enqueue('diag.noop', jsonb_build_object('n', n), correlation_id => 'order-' || n) "
        "FROM generate_series(1, 50) AS n");
    ASSERT_EQ(committed.size(), 50U);
    ASSERT_TRUE(eventually([&] { return count("state = 'published'") == 50; }, 10s)) << scheduler.process->log();

    const auto ids = drain_diag_queue(50, 10s);
    EXPECT_EQ(ids.size(), 50U);
    for (const auto& row : committed) {
        ASSERT_TRUE(ids.contains(row[0])) << row[0];
        EXPECT_EQ(ids.at(row[0]), 1);
    }
    EXPECT_EQ(count("true"), 50);
    EXPECT_EQ(scheduler.metric("conveyor_relay_published_total"), 50);
    stop(scheduler);
}

TEST_F(SchedulerTest, AnIdempotencyKeyNamesOneJobInItsSourcesNamespace) {
    const auto first =
        database_.query("SELECT conveyor.enqueue('diag.noop', '{\"n\": 1}', idempotency_key => 'invoice-7')");
    const auto again =
        database_.query("SELECT conveyor.enqueue('diag.noop', '{ \"n\" : 1 }', idempotency_key => 'invoice-7')");
    EXPECT_EQ(first[0][0], again[0][0]);
    EXPECT_EQ(count("idempotency_key = 'invoice-7'"), 1);
    // The key names that job, not whatever job comes with it next.
    try {
        database_.query("SELECT conveyor.enqueue('diag.noop', '{\"n\": 2}', idempotency_key => 'invoice-7')");
        ADD_FAILURE() << "the same key with another payload was accepted";
    } catch (const pg::Error& e) {
        EXPECT_EQ(e.sqlstate(), "23505") << e.what();
        EXPECT_NE(e.message().find(first[0][0]), std::string::npos) << e.what();
    }
    EXPECT_THROW(database_.query("SELECT conveyor.enqueue('diag.fail', '{\"n\": 1}', idempotency_key => 'invoice-7')"),
                 pg::Error);
    // Another source's key of the same text is another key.
    const auto billing = database_.query(
        "SELECT conveyor.enqueue('diag.noop', '{\"n\": 1}', idempotency_key => 'invoice-7', source => 'sql:billing')");
    EXPECT_NE(billing[0][0], first[0][0]);
    EXPECT_EQ(count("idempotency_key = 'invoice-7'"), 2);
    EXPECT_THROW(database_.query("SELECT conveyor.enqueue('not a type', '{}')"), pg::Error);
    EXPECT_THROW(database_.query("SELECT conveyor.enqueue('diag.noop', '[1]')"), pg::Error);
}

TEST_F(SchedulerTest, DelayedJobsArePublishedWithinASecondOfTheirTime) {
    auto scheduler = start_scheduler({}, "scheduler-delayed");
    constexpr int kJobs = 1000;
    database_.query(
        "SELECT conveyor.enqueue('diag.noop', jsonb_build_object('n', n), now() + random() * interval '20 seconds') "
        "FROM generate_series(1, $1::int) AS n",
        {std::to_string(kJobs)});
    // None is published early.
    std::this_thread::sleep_for(1s);
    EXPECT_EQ(count("state = 'published' AND finished_at < run_at"), 0);
    ASSERT_TRUE(eventually([&] { return count("state = 'published'") == kJobs; }, 30s)) << scheduler.process->log();

    const auto lateness = database_.query(
        "SELECT max(extract(epoch FROM finished_at - run_at) * 1000)::bigint, "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - run_at) * 1000)::bigint, "
        "count(*) FILTER (WHERE finished_at < run_at) FROM conveyor.scheduled_jobs");
    std::cout << fmt::format("delayed jobs: published {} ms after their time at worst, p99 {} ms\n", lateness[0][0],
                             lateness[0][1]);
    EXPECT_LT(std::stoll(lateness[0][0]), 1000);
    EXPECT_EQ(lateness[0][2], "0");
    EXPECT_EQ(drain_diag_queue(kJobs, 10s).size(), static_cast<std::size_t>(kJobs));
    stop(scheduler);
}

TEST_F(SchedulerTest, ARelayKilledMidBatchLosesNothing) {
    constexpr int kJobs = 20'000;
    database_.query(
        "SELECT conveyor.enqueue('diag.noop', jsonb_build_object('n', n)) FROM generate_series(1, $1::int) AS n",
        {std::to_string(kJobs)});
    auto first = start_scheduler({"--relay-batch", "500"}, "scheduler-killed-relay");
    ASSERT_TRUE(eventually([&] { return count("state = 'published'") >= 2000; }, 30s)) << first.process->log();
    first.process->signal(SIGKILL);
    first.process->wait(5s);
    const auto published_before_kill = count("state = 'published'");
    ASSERT_LT(published_before_kill, kJobs) << "the relay finished before it was killed; nothing was tested";

    auto second = start_scheduler({"--relay-batch", "500"}, "scheduler-after-kill");
    ASSERT_TRUE(eventually([&] { return count("state = 'published'") == kJobs; }, 60s)) << second.process->log();
    // Counted in the queue: only the batch that was between its confirms and its commit can be there twice (with
    // the same id, which the receiving job's inbox absorbs).
    const auto in_queue = broker_.ready("conveyor.diag");
    std::cout << fmt::format("relay killed after {} of {} published: {} messages in the queue, {} duplicates\n",
                             published_before_kill, kJobs, in_queue, in_queue - kJobs);
    EXPECT_GE(in_queue, static_cast<std::uint32_t>(kJobs));
    EXPECT_LE(in_queue, static_cast<std::uint32_t>(kJobs + 500));
    const auto ids = drain_diag_queue(in_queue, 30s);
    EXPECT_EQ(ids.size(), static_cast<std::size_t>(kJobs));
    const auto expected = database_.query("SELECT id FROM conveyor.scheduled_jobs");
    for (const auto& row : expected) {
        ASSERT_TRUE(ids.contains(row[0])) << row[0] << " never arrived";
    }
    stop(second);
}

TEST_F(SchedulerTest, AnUnroutableJobIsMarkedFailedWithItsReason) {
    auto scheduler = start_scheduler({}, "scheduler-unroutable");
    const auto id = database_.query("SELECT conveyor.enqueue('nowhere.job', '{}')")[0][0];
    ASSERT_TRUE(eventually([&] { return count("state = 'failed'") == 1; }, 10s)) << scheduler.process->log();
    const auto error = database_.query("SELECT error FROM conveyor.scheduled_jobs WHERE id = $1", {id})[0][0];
    EXPECT_NE(error.find("no queue is bound for nowhere.job"), std::string::npos) << error;
    EXPECT_NE(scheduler.process->log().find(id), std::string::npos);
    stop(scheduler);
}

TEST_F(SchedulerTest, CliSchedulesListsAndCancelsDelayedJobs) {
    auto scheduler = start_scheduler({}, "scheduler-cli");
    const auto kept = run_cli({"enqueue", "diag.noop", "--in", "2s", "--pg-url", pg_url()});
    const auto cancelled = run_cli({"enqueue", "diag.noop", "--in", "60s", "--pg-url", pg_url()});
    const auto kept_id = kept.substr(0, kept.find('\n'));
    const auto cancelled_id = cancelled.substr(0, cancelled.find('\n'));
    const auto listed = run_cli({"scheduled", "--pg-url", pg_url(), "list"});
    EXPECT_NE(listed.find(kept_id), std::string::npos) << listed;
    EXPECT_NE(listed.find(cancelled_id), std::string::npos) << listed;
    EXPECT_NE(run_cli({"scheduled", "--pg-url", pg_url(), "cancel", cancelled_id}).find("cancelled"),
              std::string::npos);

    const auto ids = drain_diag_queue(1, 10s);
    EXPECT_EQ(ids.size(), 1U);
    EXPECT_TRUE(ids.contains(kept_id));
    std::this_thread::sleep_for(2s);
    EXPECT_EQ(broker_.ready("conveyor.diag"), 0U) << "a cancelled job was published";
    EXPECT_EQ(count("state = 'cancelled'"), 1);

    // Cancelling it again, or a published job, is refused with the reason.
    auto [status, output] =
        run_command({(binary_dir() / "conveyor").string(), "scheduled", "--pg-url", pg_url(), "cancel", kept_id}, 30s);
    EXPECT_EQ(status, 1);
    EXPECT_NE(output.find("published, not pending"), std::string::npos) << output;
    auto [bad_status, bad_output] = run_command(
        {(binary_dir() / "conveyor").string(), "enqueue", "diag.noop", "--at", "next tuesday", "--pg-url", pg_url()},
        30s);
    EXPECT_EQ(bad_status, 2) << bad_output;
    stop(scheduler);
}

TEST_F(SchedulerTest, TwoReplicasFireEachSecondOnceEvenWhenTheLeaderIsKilled) {
    const auto schedules = write_file("every-second", R"(schedules:
  - name: every-second
    cron: "* * * * * *"
    type: diag.noop
    payload: {source: cron}
)");
    auto first = start_scheduler({"--schedules", schedules.string()}, "scheduler-replica-1");
    auto second = start_scheduler({"--schedules", schedules.string()}, "scheduler-replica-2");
    ASSERT_TRUE(eventually([&] { return first.leading() || second.leading(); }, 10s));
    std::this_thread::sleep_for(12s);
    EXPECT_NE(first.leading(), second.leading()) << "exactly one replica leads";
    auto& leader = first.leading() ? first : second;
    auto& standby = first.leading() ? second : first;
    leader.process->signal(SIGKILL);
    leader.process->wait(5s);
    ASSERT_TRUE(eventually([&] { return standby.leading(); }, 5s)) << standby.process->log();
    std::this_thread::sleep_for(18s);
    stop(standby);

    const auto fires = database_.query(
        "SELECT extract(epoch FROM run_at)::bigint, count(*) FROM conveyor.scheduled_jobs "
        "WHERE source = 'schedule:every-second' GROUP BY run_at ORDER BY run_at");
    ASSERT_GE(fires.size(), 30U);
    const auto first_fire = std::stoll(fires.front()[0]);
    const auto last_fire = std::stoll(fires.back()[0]);
    // One job per fire time, and no fire time missing between the first and the last, across the kill.
    EXPECT_EQ(static_cast<std::int64_t>(fires.size()), last_fire - first_fire + 1);
    for (const auto& fire : fires) {
        EXPECT_EQ(fire[1], "1") << "fire time " << fire[0];
    }
    // Every published fire is in the queue once; a copy is possible only if the killed replica's relay was between
    // a confirm and its commit (the last fire may still be pending, unpublished, when the standby stopped).
    const auto published = database_.query("SELECT id FROM conveyor.scheduled_jobs WHERE state = 'published'");
    const auto in_queue = broker_.ready("conveyor.diag");
    EXPECT_GE(in_queue, published.size());
    EXPECT_LE(in_queue, published.size() + 1);
    const auto ids = drain_diag_queue(in_queue, 10s);
    EXPECT_EQ(ids.size(), published.size());
    for (const auto& row : published) {
        EXPECT_TRUE(ids.contains(row[0])) << row[0] << " never arrived";
    }
    const auto state = database_.query("SELECT fired, misfired, next_fire_at IS NOT NULL FROM conveyor.schedules");
    ASSERT_EQ(state.size(), 1U);
    EXPECT_EQ(std::stoull(state[0][0]), fires.size());
    EXPECT_EQ(state[0][1], "0");
}

TEST_F(SchedulerTest, MissedFireTimesAreCaughtUpOrSkippedByPolicy) {
    // Both schedules last fired an hour ago, as after an outage of every replica.
    database_.query(
        "INSERT INTO conveyor.schedules (name, cron, timezone, type, payload, misfire, last_fire_at) VALUES "
        "('catching-up', '* * * * *', 'UTC', 'diag.noop', '{}', 'catch_up', date_trunc('minute', now()) - interval "
        "'1 hour'), "
        "('skipping', '* * * * *', 'UTC', 'diag.noop', '{}', 'skip', date_trunc('minute', now()) - interval '1 hour')");
    const auto schedules = write_file("misfires", R"(schedules:
  - name: catching-up
    cron: "* * * * *"
    type: diag.noop
    misfire: catch_up
    max_catch_up: 3
    misfire_grace: 1s
  - name: skipping
    cron: "* * * * *"
    type: diag.noop
    misfire: skip
    misfire_grace: 1s
)");
    auto scheduler = start_scheduler({"--schedules", schedules.string()}, "scheduler-misfires");
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar(
                       "SELECT count(*) FROM conveyor.schedules "
                       "WHERE last_fire_at > now() - interval '2 minutes'") == 2;
        },
        10s))
        << scheduler.process->log();
    stop(scheduler);
    // 60 fire times since the last one (61 if a minute began since the INSERT); this minute's may still be within
    // the 1 s grace, and then it is enqueued on time rather than missed.
    const auto caught_up = count("source = 'schedule:catching-up'");
    const auto skipped = count("source = 'schedule:skipping'");
    const auto misfired = database_.query("SELECT name, misfired FROM conveyor.schedules ORDER BY name");
    const auto missed_catching_up = std::stoll(misfired[0][1]);
    const auto missed_skipping = std::stoll(misfired[1][1]);
    EXPECT_TRUE(caught_up == 3 || caught_up == 4) << caught_up;
    EXPECT_TRUE(skipped == 0 || skipped == 1) << skipped;
    EXPECT_TRUE(caught_up + missed_catching_up == 60 || caught_up + missed_catching_up == 61) << missed_catching_up;
    EXPECT_TRUE(skipped + missed_skipping == 60 || skipped + missed_skipping == 61) << missed_skipping;
    const auto log = scheduler.process->log();
    EXPECT_NE(log.find(fmt::format("catching-up missed {} fire times", missed_catching_up)), std::string::npos) << log;
    EXPECT_NE(log.find(fmt::format("skipping missed {} fire times", missed_skipping)), std::string::npos) << log;
}

TEST_F(SchedulerTest, MetricsExposeEveryNameOfTheContract) {
    const auto schedules = write_file("metric-names", R"(schedules:
  - name: metric-names
    cron: "* * * * * *"
    type: diag.noop
)");
    // Stored dead letters are counted by family and reason: the series appear with the first one.
    database_.query(
        "INSERT INTO conveyor.dead_letters (job_id, type, family, queue, routing_key, reason, error, error_pattern, "
        "fingerprint, attempts, failed_at, headers, body, archive_key) VALUES ('metric-names', 'diag.noop', 'diag', "
        "'conveyor.diag.dlq', 'diag.noop', 'permanent_failure', 'x', 'x', '0000000000000000', 1, now(), '{}', '', "
        "'metric-names')");
    auto scheduler = start_scheduler({"--schedules", schedules.string()}, "scheduler-metric-names");
    ASSERT_TRUE(eventually([&] { return scheduler.metric("conveyor_relay_published_total") >= 1; }, 10s))
        << scheduler.process->log();
    ASSERT_TRUE(eventually([&] { return scheduler.metric("conveyor_dead_letters_stored") == 1; }, 10s));
    // Read from the schedules table every few seconds: a per-second schedule's next fire is about now.
    const std::vector<std::string> schedule_label{"schedule=\"metric-names\""};
    ASSERT_TRUE(eventually(
        [&] { return scheduler.metric("conveyor_schedule_next_fire_timestamp_seconds", schedule_label) > 0; }, 15s));
    const auto now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    EXPECT_NEAR(scheduler.metric("conveyor_schedule_next_fire_timestamp_seconds", schedule_label), now, 10);
    const auto metrics = http_get(scheduler.port, "/metrics")->second;
    const int checked = expect_metric_names(metrics, source_dir() / "tests/integration/scheduler_metric_names.txt");
    EXPECT_GE(checked, 10);
    EXPECT_GE(metric_sum(metrics, "conveyor_schedule_fired_total", {"schedule=\"metric-names\""}), 1);
    EXPECT_EQ(metric_sum(metrics, "conveyor_scheduler_leader"), 1);
    EXPECT_EQ(metric_sum(metrics, "conveyor_broker_connected"), 1);
    stop(scheduler);
}

TEST_F(SchedulerTest, DeadLettersAreMovedIntoTheDatabaseOnceWithEverythingNeededToReplayThem) {
    auto worker = start_worker({}, "archiver-worker");
    constexpr int kJobs = 20;
    for (int i = 0; i < kJobs; ++i) {
        broker_.publish(Broker::job("diag.fail", R"({"times": 1, "permanent": true})", fmt::format("dead-{}", i)));
    }
    ASSERT_TRUE(eventually([&] { return broker_.ready("conveyor.diag.dlq") == kJobs; }, 30s));
    // Two copies of one message no worker wrote (no headers, a body that is not even UTF-8): stored once, as is.
    for (int copy = 0; copy < 2; ++copy) {
        amqp::Message raw;
        raw.routing_key = "conveyor.diag.dlq";
        raw.body = "\xff\xfe not json";
        raw.properties.message_id = "raw-1";
        broker_.publish(raw);
    }

    auto scheduler = start_scheduler({}, "scheduler-archiver");
    ASSERT_TRUE(
        eventually([&] { return database_.scalar("SELECT count(*) FROM conveyor.dead_letters") == kJobs + 1; }, 30s))
        << scheduler.process->log();
    EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
    const auto failed = database_.query(
        "SELECT reason, type, family, queue, attempts, count(*), count(DISTINCT fingerprint), min(error_pattern), "
        "bool_and(body = convert_to('{\"times\": 1, \"permanent\": true}', 'UTF8')), "
        "bool_and(headers ? 'x-conveyor-worker') "
        "FROM conveyor.dead_letters WHERE job_id LIKE 'dead-%' GROUP BY 1, 2, 3, 4, 5");
    ASSERT_EQ(failed.size(), 1U);
    EXPECT_EQ(failed[0][0], "permanent_failure");
    EXPECT_EQ(failed[0][1], "diag.fail");
    EXPECT_EQ(failed[0][2], "diag");
    EXPECT_EQ(failed[0][3], "conveyor.diag.dlq");
    EXPECT_EQ(failed[0][4], "1");
    EXPECT_EQ(failed[0][5], std::to_string(kJobs));
    EXPECT_EQ(failed[0][6], "1") << "the same failure of different jobs has one fingerprint";
    EXPECT_EQ(failed[0][8], "t") << "the body is kept byte for byte";
    EXPECT_EQ(failed[0][9], "t") << "the headers are kept";
    const auto raw =
        database_.query("SELECT reason, encode(body, 'hex'), state FROM conveyor.dead_letters WHERE job_id = 'raw-1'");
    ASSERT_EQ(raw.size(), 1U);
    EXPECT_EQ(raw[0][0], "unknown") << "neither the worker nor the broker dead-lettered it";
    EXPECT_EQ(raw[0][1], "fffe206e6f74206a736f6e");
    EXPECT_EQ(raw[0][2], "dead");
    stop(scheduler);
}

TEST_F(SchedulerTest, AnInvalidSchedulesFileIsRefusedWithWhereAndWhy) {
    const auto cases = std::vector<std::pair<std::string, std::string>>{
        {"cron: \"61 * * * *\"\n    type: diag.noop", "minute"},
        {"cron: \"* * * * *\"\n    type: diag.nothing", "unknown job type 'diag.nothing'"},
        {"cron: \"* * * * *\"\n    timezone: Europe/Berln\n    type: diag.noop", "Europe/Berln"},
        {"cron: \"* * * * *\"\n    type: diag.sleep\n    payload: {ms: -5}", "invalid payload for diag.sleep"},
        {"cron: \"* * * * *\"\n    type: diag.noop\n    misfire: later", "misfire must be catch_up or skip"},
    };
    for (const auto& [entry, expected] : cases) {
        const auto path = write_file("invalid", "schedules:\n  - name: broken\n    " + entry + "\n");
        auto [status, output] =
            run_command({(binary_dir() / "conveyor-scheduler").string(), "--schedules", path.string()}, 30s);
        EXPECT_EQ(status, 2) << output;
        EXPECT_NE(output.find(expected), std::string::npos) << output;
        EXPECT_NE(output.find("schedule 'broken'"), std::string::npos) << output;
    }
}

}  // namespace
}  // namespace conveyor::testing

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

/// The HTTP enqueue API, called with the real curl (as the README shows it).
class SchedulerApiTest : public SchedulerTest {
  protected:
    void SetUp() override {
        SchedulerTest::SetUp();
        const auto tokens = write_file(
            "api-tokens", fmt::format(R"(tokens:
  - name: orders-service
    sha256: {}
    scopes: [enqueue]
    rate_limit: 1000
  - name: ops
    sha256: {}
    scopes: [admin]
  - name: slow-client
    sha256: {}
    scopes: [enqueue]
    rate_limit: 0.1
)",
                                      sha256("enqueue-secret"), sha256("admin-secret"), sha256("slow-secret")));
        scheduler_ = start_scheduler({"--api-tokens-file", tokens.string()}, "scheduler-api");
    }

    void TearDown() override { stop(scheduler_); }

    [[nodiscard]] ApiResponse call(const std::string& method, const std::string& path, const std::string& token,
                                   const std::string& body = {}) const {
        return call_api(scheduler_.port, method, path, token, body);
    }

    SchedulerUnderTest scheduler_;
};

TEST_F(SchedulerApiTest, EnqueuesOneJobAndAnswersWithItsId) {
    const auto response = call("POST", "/v1/jobs", "enqueue-secret",
                               R"({"type": "diag.sleep", "payload": {"ms": 1}, "correlation_id": "order-1"})");
    ASSERT_EQ(response.status, 202) << response.body;
    const auto id = response.body.substr(7, 36);
    const auto ids = drain_diag_queue(1, 10s);
    ASSERT_TRUE(ids.contains(id)) << response.body;
    const auto row = database_.query("SELECT source, correlation_id FROM conveyor.scheduled_jobs WHERE id = $1", {id});
    EXPECT_EQ(row[0][0], "api:orders-service");
    EXPECT_EQ(row[0][1], "order-1");
}

/// A priority given through SQL, HTTP or the CLI (immediate or scheduled) reaches its band's queue, and a wrong one
/// is refused on each of them.
TEST_F(SchedulerApiTest, APriorityGivenOnEveryWayInReachesItsBand) {
    const auto sql_high = database_.query("SELECT conveyor.enqueue('diag.noop', '{}', priority => 'high')")[0][0];
    try {
        database_.query("SELECT conveyor.enqueue('diag.noop', '{}', priority => 'urgent')");
        ADD_FAILURE() << "conveyor.enqueue() took priority 'urgent'";
    } catch (const pg::Error& e) {
        EXPECT_NE(std::string(e.what()).find("priority 'urgent' is not high, normal or low"), std::string::npos)
            << e.what();
    }
    const auto http_low = call("POST", "/v1/jobs", "enqueue-secret", R"({"type": "diag.noop", "priority": "low"})");
    ASSERT_EQ(http_low.status, 202) << http_low.body;
    const auto refused = call("POST", "/v1/jobs", "enqueue-secret", R"({"type": "diag.noop", "priority": "urgent"})");
    EXPECT_EQ(refused.status, 400) << refused.body;
    EXPECT_NE(refused.body.find("priority must be"), std::string::npos) << refused.body;
    run_cli({"enqueue", "diag.noop", "--priority", "high", "--job-id", "cli-high"});
    const auto cli_low = run_cli({"enqueue", "diag.noop", "--priority", "low", "--in", "1s", "--pg-url", pg_url()});
    auto [status, output] = run_command(
        {(binary_dir() / "conveyor").string(), "--amqp-url", amqp_url(), "enqueue", "diag.noop", "--priority", "soon"},
        30s);
    EXPECT_EQ(status, 2) << output;
    EXPECT_NE(output.find("--priority"), std::string::npos) << output;

    const auto ids_in = [&](const std::string& queue, std::size_t expected) {
        std::set<std::string> ids;
        for (const auto& delivery : broker_.take(queue, expected, 10s)) {
            ids.insert(delivery.message.properties.message_id);
        }
        return ids;
    };
    EXPECT_EQ(ids_in("conveyor.diag.high", 2), (std::set<std::string>{sql_high, "cli-high"}));
    std::smatch scheduled;
    ASSERT_TRUE(std::regex_search(cli_low, scheduled, std::regex("[0-9a-f]{8}-[0-9a-f-]{27}"))) << cli_low;
    EXPECT_EQ(ids_in("conveyor.diag.low", 2), (std::set<std::string>{http_low.body.substr(7, 36), scheduled.str()}));
    EXPECT_EQ(broker_.counts("conveyor.diag").messages, 0U);
    const auto listed = call("GET", "/v1/scheduled?state=all", "admin-secret");
    EXPECT_NE(listed.body.find(R"("priority":"low")"), std::string::npos) << listed.body;
}

TEST_F(SchedulerApiTest, RefusesWithTheRightStatusAndAPreciseError) {
    const auto job = std::string(R"({"type": "diag.noop"})");
    auto missing = call("POST", "/v1/jobs", "", job);
    EXPECT_EQ(missing.status, 401);
    EXPECT_EQ(missing.headers["www-authenticate"], "Bearer realm=\"conveyor\"");
    EXPECT_EQ(call("POST", "/v1/jobs", "wrong-secret", job).status, 401);
    auto forbidden = call("GET", "/v1/scheduled", "enqueue-secret");
    EXPECT_EQ(forbidden.status, 403);
    EXPECT_NE(forbidden.body.find("lacks the viewer role"), std::string::npos) << forbidden.body;

    auto malformed = call("POST", "/v1/jobs", "enqueue-secret", R"({"type": "diag.noop")");
    EXPECT_EQ(malformed.status, 400);
    EXPECT_NE(malformed.body.find("not valid JSON"), std::string::npos) << malformed.body;
    auto invalid = call("POST", "/v1/jobs", "enqueue-secret",
                        R"({"jobs": [{"type": "diag.noop"}, {"type": "diag.sleep", "payload": {"ms": "soon"}}]})");
    EXPECT_EQ(invalid.status, 400);
    EXPECT_NE(invalid.body.find("jobs[1]: invalid payload for diag.sleep"), std::string::npos) << invalid.body;
    auto unknown = call("POST", "/v1/jobs", "enqueue-secret", R"({"type": "diag.teleport"})");
    EXPECT_NE(unknown.body.find("unknown job type 'diag.teleport'"), std::string::npos) << unknown.body;
    auto bad_time = call("POST", "/v1/jobs", "enqueue-secret", R"({"type": "diag.noop", "run_at": "tomorrow"})");
    EXPECT_EQ(bad_time.status, 400);
    EXPECT_NE(bad_time.body.find("RFC 3339"), std::string::npos) << bad_time.body;
    EXPECT_EQ(count("true"), 0) << "a refused batch enqueues nothing";

    auto oversize = call("POST", "/v1/jobs", "enqueue-secret",
                         fmt::format(R"({{"type": "diag.noop", "payload": {{"pad": "{}"}}}})",
                                     std::string(std::size_t{9} * 1024 * 1024, 'x')));
    EXPECT_EQ(oversize.status, 413);

    int limited = 0;
    std::string retry_after;
    for (int i = 0; i < 6; ++i) {
        auto response = call("POST", "/v1/jobs", "slow-secret", job);
        if (response.status == 429) {
            ++limited;
            retry_after = response.headers["retry-after"];
        }
    }
    // One request per 10 s: the first goes through, the next five within those 10 s are refused.
    EXPECT_EQ(limited, 5);
    EXPECT_TRUE(retry_after == "9" || retry_after == "10") << retry_after;
    const auto metrics = http_get(scheduler_.port, "/metrics")->second;
    EXPECT_GE(metric_sum(metrics, "conveyor_api_requests_total", {"route=\"/v1/jobs\"", "status=\"429\""}), 2);
    EXPECT_GE(metric_sum(metrics, "conveyor_api_requests_total", {"route=\"/v1/jobs\"", "status=\"401\""}), 2);
}

TEST_F(SchedulerApiTest, TheSameIdempotencyKeyGivesTheSameJob) {
    const auto job = std::string(R"({"type": "diag.noop", "idempotency_key": "payment-42", "delay": "1h"})");
    const auto first = call("POST", "/v1/jobs", "enqueue-secret", job);
    const auto again = call("POST", "/v1/jobs", "enqueue-secret", job);
    ASSERT_EQ(first.status, 202);
    EXPECT_EQ(first.body, again.body);
    EXPECT_EQ(count("idempotency_key = 'payment-42'"), 1);

    // Listed, then cancelled, by an admin.
    const auto id = first.body.substr(7, 36);
    const auto listed = call("GET", "/v1/scheduled?state=pending&type=diag.noop", "admin-secret");
    EXPECT_EQ(listed.status, 200);
    EXPECT_NE(listed.body.find(id), std::string::npos) << listed.body;
    EXPECT_EQ(call("DELETE", "/v1/scheduled/" + id, "admin-secret").status, 200);
    EXPECT_EQ(call("DELETE", "/v1/scheduled/" + id, "admin-secret").status, 409);
    EXPECT_EQ(call("DELETE", "/v1/scheduled/00000000-0000-0000-0000-000000000000", "admin-secret").status, 404);
    EXPECT_EQ(call("DELETE", "/v1/scheduled/not-an-id", "admin-secret").status, 400);
    const auto schedules = call("GET", "/v1/schedules", "enqueue-secret");
    EXPECT_EQ(schedules.status, 200);
    EXPECT_EQ(schedules.body, "{\"schedules\":[]}\n");
}

/// Requests that arrive together share one statement and one commit (their rows share a transaction id), yet each
/// gets its own ids, and a request the database refuses fails alone.
TEST_F(SchedulerApiTest, ConcurrentRequestsShareACommitYetEachGetsItsOwnIdsAndItsOwnRefusal) {
    ASSERT_EQ(call("POST", "/v1/jobs", "enqueue-secret",
                   R"({"type": "diag.noop", "idempotency_key": "taken", "delay": "1h"})")
                  .status,
              202);
    constexpr int kGood = 60;
    constexpr int kTaken = 5;    // the key names a job of another type: 409
    constexpr int kNoBatch = 5;  // a batch that does not exist: 404
    std::vector<ApiResponse> responses(kGood + kTaken + kNoBatch);
    std::vector<std::thread> clients;
    for (int i = 0; i < static_cast<int>(responses.size()); ++i) {
        std::string body;
        if (i < kGood) {
            body = fmt::format(R"({{"type": "diag.noop", "idempotency_key": "together-{}", "delay": "1h"}})", i);
        } else if (i < kGood + kTaken) {
            body = R"({"type": "diag.fail", "idempotency_key": "taken", "delay": "1h"})";
        } else {
            body = R"({"type": "diag.noop", "batch": "no-such-batch", "delay": "1h"})";
        }
        clients.emplace_back(
            [this, &responses, i, body] { responses[i] = call("POST", "/v1/jobs", "enqueue-secret", body); });
    }
    for (auto& client : clients) {
        client.join();
    }
    for (int i = 0; i < kGood; ++i) {
        ASSERT_EQ(responses[i].status, 202) << responses[i].body;
        const auto row = database_.query("SELECT id FROM conveyor.scheduled_jobs WHERE idempotency_key = $1",
                                         {fmt::format("together-{}", i)});
        ASSERT_EQ(row.size(), 1U);
        EXPECT_EQ(responses[i].body, fmt::format("{{\"id\":\"{}\"}}\n", row[0][0]));
    }
    for (int i = kGood; i < kGood + kTaken; ++i) {
        EXPECT_EQ(responses[i].status, 409) << responses[i].body;
    }
    for (int i = kGood + kTaken; i < kGood + kTaken + kNoBatch; ++i) {
        EXPECT_EQ(responses[i].status, 404) << responses[i].body;
    }
    EXPECT_LT(database_.scalar("SELECT count(DISTINCT xmin::text) FROM conveyor.scheduled_jobs "
                               "WHERE idempotency_key LIKE 'together-%'"),
              kGood);
}

TEST_F(SchedulerApiTest, TenThousandJobsInBatchesAllArrive) {
    std::set<std::string> accepted;
    for (int request = 0; request < 10; ++request) {
        std::string jobs;
        for (int i = 0; i < 1000; ++i) {
            jobs += fmt::format(R"({}{{"type":"diag.sleep","payload":{{"ms":{}}}}})", i == 0 ? "" : ",", i % 5);
        }
        const auto response = call("POST", "/v1/jobs", "enqueue-secret", R"({"jobs":[)" + jobs + "]}");
        ASSERT_EQ(response.status, 202) << response.body.substr(0, 300);
        for (std::size_t at = response.body.find('"', 8); at != std::string::npos && accepted.size() < 100'000;
             at = response.body.find('"', at + 38)) {
            if (response.body.size() > at + 37 && response.body[at + 37] == '"') {
                accepted.insert(response.body.substr(at + 1, 36));
            }
        }
    }
    ASSERT_EQ(accepted.size(), 10'000U);
    const auto ids = drain_diag_queue(10'000, 60s);
    EXPECT_EQ(ids.size(), 10'000U);
    for (const auto& id : accepted) {
        ASSERT_TRUE(ids.contains(id)) << id;
    }
}

}  // namespace
}  // namespace conveyor::testing
