// Unique jobs against the real broker and database: one run per key whatever way in and however many publishers,
// the window after a job ends, a cancel that frees the key, and a malformed header dead-lettered with its reason.
#include <fmt/format.h>

#include <atomic>
#include <iostream>
#include <thread>

#include "scheduler_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

class UniqueJobsTest : public SchedulerFixture {
  protected:
    void SetUp() override {
        SchedulerFixture::SetUp();
        database_.query("TRUNCATE conveyor.unique_keys, conveyor.scheduled_jobs");
    }

    static amqp::Message unique_job(const std::string& type, const std::string& body, const std::string& job_id,
                                    const std::string& key, std::int64_t window) {
        auto job = Broker::job(type, body, job_id);
        amqp::set_header(job.properties.headers, "x-conveyor-unique-key", key);
        amqp::set_header(job.properties.headers, "x-conveyor-unique-for", window);
        return job;
    }

    std::string state_of(const std::string& job_id) {
        const auto rows = database_.query(
            "SELECT state FROM conveyor.job_events WHERE job_id = $1 AND state <> 'running' "
            "ORDER BY recorded_at DESC LIMIT 1",
            {job_id});
        return rows.empty() ? std::string("(none)") : rows[0][0];
    }

    static double settled(const std::vector<WorkerUnderTest>& workers) {
        double total = 0;
        for (const auto& worker : workers) {
            total += worker.metric("conveyor_jobs_completed_total", {"outcome=\"success\""}) +
                     worker.metric("conveyor_jobs_completed_total", {"outcome=\"deduplicated\""});
        }
        return total;
    }
};

/// Four clients publish the same 1,000 keys over AMQP and four send them to the HTTP API, all at once, to two
/// workers: each key runs exactly once, and every other copy is discarded as deduplicated.
TEST_F(UniqueJobsTest, EightClientsOverAmqpAndHttpRunEachKeyOnce) {
    constexpr int kKeys = 1000;
    constexpr int kClients = 4;
    constexpr int kPerRequest = 100;
    auto scheduler = start_scheduler_with_tokens("unique-scheduler");
    std::vector<WorkerUnderTest> workers;
    workers.push_back(start_worker({"--concurrency", "50", "--name", "unique-1"}, "unique-1"));
    workers.push_back(start_worker({"--concurrency", "50", "--name", "unique-2"}, "unique-2"));
    std::atomic<int> failures{0};
    // The relay makes the HTTP way in slower than a direct publish: the AMQP clients start once the HTTP clients
    // are a few requests in, so that each side wins some keys and both are proven against the other.
    std::atomic<int> requests_sent{0};
    std::vector<std::thread> clients;
    for (int client = 0; client < kClients; ++client) {
        clients.emplace_back([&, client] {
            try {
                Broker broker;
                broker.connect();
                while (requests_sent < kClients * 2 && failures == 0) {
                    std::this_thread::sleep_for(1ms);
                }
                std::vector<amqp::Message> jobs;
                // Each client in its own order, so that the copies of a key race each other from every side.
                for (int n = 0; n < kKeys; ++n) {
                    const auto key = (kKeys - 1 - n + client * kKeys / kClients) % kKeys;
                    jobs.push_back(unique_job("diag.noop", "{}", fmt::format("amqp{}-k{}", client, key),
                                              fmt::format("k{}", key), 3600));
                }
                broker.publish_all(std::move(jobs));
            } catch (const std::exception& e) {
                ADD_FAILURE() << "AMQP client " << client << ": " << e.what();
                ++failures;
            }
        });
        clients.emplace_back([&, client] {
            for (int first = 0; first < kKeys; first += kPerRequest) {
                std::string jobs;
                for (int n = first; n < first + kPerRequest; ++n) {
                    const auto key = (n + client * kKeys / kClients) % kKeys;
                    jobs += fmt::format(R"({}{{"type":"diag.noop","unique_key":"k{}","unique_for":3600}})",
                                        n == first ? "" : ",", key);
                }
                const auto response = call_api(scheduler.port, "POST", "/v1/jobs", "enqueue-secret",
                                               fmt::format(R"({{"jobs":[{}]}})", jobs));
                ++requests_sent;
                if (response.status != 202) {
                    ADD_FAILURE() << "HTTP client " << client << ": " << response.status << " " << response.body;
                    ++failures;
                }
            }
        });
    }
    for (auto& client : clients) {
        client.join();
    }
    ASSERT_EQ(failures, 0);
    ASSERT_TRUE(eventually([&] { return settled(workers) >= 2 * kClients * kKeys; }, 120s))
        << settled(workers) << " settled; " << workers[0].process->log();
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar(
                       "SELECT count(*) FROM conveyor.job_events WHERE state IN ('succeeded', "
                       "'deduplicated')") == 2 * kClients * kKeys;
        },
        10s));
    // The key of each run: the HTTP jobs' from their rows, the AMQP jobs' from their ids.
    const auto runs_per_key = database_.query(
        "SELECT count(*) FILTER (WHERE runs = 1), count(*) FILTER (WHERE runs <> 1), coalesce(sum(runs), 0) FROM "
        "(SELECT coalesce(s.unique_key, substring(e.job_id from '-(k[0-9]+)$')) AS key, count(*) AS runs "
        "FROM conveyor.job_events e LEFT JOIN conveyor.scheduled_jobs s ON s.id::text = e.job_id "
        "WHERE e.state = 'succeeded' GROUP BY 1) AS per_key");
    EXPECT_EQ(runs_per_key[0][0], std::to_string(kKeys)) << "keys that ran exactly once";
    EXPECT_EQ(runs_per_key[0][1], "0") << "keys that ran more than once";
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE state = 'deduplicated'"),
              (2 * kClients - 1) * kKeys);
    const auto from_amqp =
        database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE state = 'succeeded' AND job_id LIKE 'amqp%'");
    std::cout << fmt::format("unique keys: {} ran from AMQP, {} from HTTP\n", from_amqp, kKeys - from_amqp);
    EXPECT_GT(from_amqp, 0) << "no AMQP copy won a key: the race was not run";
    EXPECT_LT(from_amqp, kKeys) << "no HTTP copy won a key: the race was not run";
    // Both workers discarded copies: the keys were contended across processes, not inside one.
    for (const auto& worker : workers) {
        EXPECT_GT(worker.metric("conveyor_jobs_completed_total", {"outcome=\"deduplicated\""}), 0);
    }
    stop(scheduler);
}

/// After the job ends its key stays held for the window, then is free; a cancel frees it at once; a malformed
/// window is dead-lettered with its reason.
TEST_F(UniqueJobsTest, AKeyIsFreeAfterItsWindowAndAtOnceAfterACancel) {
    auto worker = start_worker({}, "unique-window");
    broker_.publish(unique_job("diag.noop", "{}", "window-1", "w", 2));
    ASSERT_TRUE(eventually([&] { return state_of("window-1") == "succeeded"; }, 10s)) << worker.process->log();
    broker_.publish(unique_job("diag.noop", "{}", "window-2", "w", 2));
    ASSERT_TRUE(eventually([&] { return state_of("window-2") == "deduplicated"; }, 10s));
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar(
                       "SELECT count(*) FROM conveyor.unique_keys WHERE unique_key = 'w' AND "
                       "held_until <= now()") == 1;
        },
        10s));
    broker_.publish(unique_job("diag.noop", "{}", "window-3", "w", 2));
    ASSERT_TRUE(eventually([&] { return state_of("window-3") == "succeeded"; }, 10s));

    broker_.publish(unique_job("diag.sleep", R"({"ms": 60000})", "held-1", "c", 3600));
    ASSERT_TRUE(eventually([&] { return worker.metric("conveyor_jobs_in_flight") == 1; }, 10s));
    broker_.publish(unique_job("diag.sleep", R"({"ms": 10})", "held-2", "c", 3600));
    ASSERT_TRUE(eventually([&] { return state_of("held-2") == "deduplicated"; }, 10s));
    run_cli({"jobs", "cancel", "--pg-url", pg_url(), "held-1"});
    ASSERT_TRUE(eventually([&] { return state_of("held-1") == "cancelled"; }, 10s));
    broker_.publish(unique_job("diag.sleep", R"({"ms": 10})", "held-3", "c", 3600));
    ASSERT_TRUE(eventually([&] { return state_of("held-3") == "succeeded"; }, 10s)) << worker.process->log();

    auto malformed = unique_job("diag.noop", "{}", "malformed-window", "m", 0);
    amqp::set_header(malformed.properties.headers, "x-conveyor-unique-for", std::string("an hour"));
    broker_.publish(std::move(malformed));
    const auto dead = broker_.take("conveyor.diag.dlq", 1, 10s);
    ASSERT_EQ(dead.size(), 1U);
    const auto& headers = dead[0].message.properties.headers;
    EXPECT_EQ(amqp::find_text_header(headers, "x-conveyor-reason"), "invalid_envelope");
    EXPECT_NE(std::string(amqp::find_text_header(headers, "x-conveyor-error")).find("x-conveyor-unique-for"),
              std::string::npos);
}

/// A schedule that fires every second a job that runs for 2.5 s, with a unique key: the fires do not overlap, the
/// ones that would are deduplicated, and each ran in the band the schedule names.
TEST_F(UniqueJobsTest, AScheduleWithAUniqueKeyNeverOverlapsItsRuns) {
    const auto schedules = write_file("unique-schedules", R"(schedules:
  - name: slow-every-second
    cron: "* * * * * *"
    type: diag.sleep
    payload: {ms: 2500}
    priority: high
    unique_key: slow-every-second
)");
    auto worker = start_worker({"--concurrency", "10"}, "unique-schedule-worker");
    auto scheduler = start_scheduler({"--schedules", schedules.string()}, "unique-schedule");
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE state = 'succeeded'") >= 2 &&
                   database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE state = 'deduplicated'") >= 3;
        },
        20s))
        << worker.process->log();
    stop(scheduler);
    EXPECT_LE(worker.metric("conveyor_jobs_in_flight"), 1) << "two fires ran at once";
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE queue <> 'conveyor.diag.high'"), 0);
    // The runs that did happen were one after the other: none started before the previous one ended.
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.job_events a JOIN conveyor.job_events b "
                               "ON a.job_id < b.job_id AND a.state = 'succeeded' AND b.state = 'succeeded' "
                               "AND a.started_at < b.ended_at AND b.started_at < a.ended_at"),
              0);
}

/// A unique job the broker dead-lettered on its own (its delivery limit) never reached a worker's settle: the
/// archiver starts its key's window as it stores the dead letter, so the key is not held forever.
TEST_F(UniqueJobsTest, ADeadLetterTheBrokerMadeStartsItsKeysWindowWhenArchived) {
    database_.query(
        "INSERT INTO conveyor.unique_keys (job_type, unique_key, job_id) VALUES ('diag.crash', 'p', 'poison-1')");
    database_.query("TRUNCATE conveyor.dead_letters");
    auto poison = unique_job("diag.crash", "{}", "poison-1", "p", 60);
    // Straight into the dead-letter queue, with the type a broker dead-lettering would record (x-death names it).
    poison.exchange = "";
    poison.routing_key = "conveyor.diag.dlq";
    amqp::set_header(poison.properties.headers, "x-conveyor-original-routing-key", std::string("diag.crash"));
    broker_.publish(std::move(poison));
    auto scheduler = start_scheduler({}, "unique-archiver");
    ASSERT_TRUE(eventually(
        [&] { return database_.scalar("SELECT count(*) FROM conveyor.dead_letters WHERE job_id = 'poison-1'") == 1; },
        20s))
        << scheduler.process->log();
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.unique_keys WHERE job_id = 'poison-1' AND held_until "
                               "BETWEEN now() + interval '50 seconds' AND now() + interval '60 seconds'"),
              1);
    stop(scheduler);
}

}  // namespace
}  // namespace conveyor::testing
