#include <chrono>
#include <cstdio>
#include <regex>
#include <sstream>

#include "worker_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;

/// Milliseconds since the epoch of a worker log line's UTC timestamp ("2026-11-22T01:23:02.253Z info …"): the
/// whole date counts, so a run that crosses midnight measures its delays right.
std::optional<std::int64_t> log_time_ms(const std::string& line) {
    int year = 0;
    unsigned month = 0;
    unsigned day = 0;
    int hours = 0;
    int minutes = 0;
    int seconds = 0;
    int millis = 0;
    if (std::sscanf(line.c_str(), "%d-%u-%uT%d:%d:%d.%dZ", &year, &month, &day, &hours, &minutes, &seconds, &millis) !=
        7) {
        return std::nullopt;
    }
    const std::chrono::sys_days date{std::chrono::year{year} / std::chrono::month{month} / std::chrono::day{day}};
    const auto at = date + std::chrono::hours{hours} + std::chrono::minutes{minutes} + std::chrono::seconds{seconds} +
                    milliseconds{millis};
    return std::chrono::duration_cast<milliseconds>(at.time_since_epoch()).count();
}

/// When each attempt of a job ended, by attempt number, from the worker's debug log.
std::map<int, std::int64_t> attempt_ends(const std::string& log, const std::string& job_id) {
    std::map<int, std::int64_t> ends;
    const std::regex attempt_line("job=" + job_id + " .* attempt ([0-9]+) (failed|succeeded)");
    std::istringstream lines(log);
    std::string line;
    while (std::getline(lines, line)) {
        std::smatch match;
        if (std::regex_search(line, match, attempt_line)) {
            if (auto at = log_time_ms(line)) {
                ends[std::stoi(match[1])] = *at;
            }
        }
    }
    return ends;
}

TEST_F(WorkerTest, AFailingJobCompletesOnItsFourthAttemptAfterDelaysThatFollowThePolicy) {
    auto worker =
        start_worker({"--retry", "diag.fail=attempts:5,base:1s,cap:4s", "--log-level", "debug"}, "retry-policy");
    broker_.publish(Broker::job("diag.fail", R"({"times": 3})", "fails-three-times"));
    ASSERT_TRUE(eventually([&] { return worker.succeeded() == 1; }, 30s)) << worker.process->log();

    const auto ends = attempt_ends(worker.process->log(), "fails-three-times");
    ASSERT_EQ(ends.size(), 4U) << worker.process->log();
    ASSERT_TRUE(ends.contains(4));
    // Retry n waits a random time up to min(cap, base * 2^(n-1)) = 1 s, 2 s, 4 s, which the ladder rounds up to
    // whole seconds (at least 1 s); the job itself takes no time.
    const std::array<std::int64_t, 3> ceilings_ms{1000, 2000, 4000};
    for (int retry = 1; retry <= 3; ++retry) {
        const auto waited = ends.at(retry + 1) - ends.at(retry);
        std::printf("{\"name\":\"retry_delay\",\"retry\":%d,\"measured_ms\":%lld,\"ceiling_ms\":%lld}\n", retry,
                    static_cast<long long>(waited), static_cast<long long>(ceilings_ms[retry - 1]));
        EXPECT_GE(waited, 950) << "retry " << retry;
        EXPECT_LE(waited, ceilings_ms[retry - 1] + 1000) << "retry " << retry;
    }
    const auto metrics = worker.metrics();
    EXPECT_EQ(metric_sum(metrics, "conveyor_jobs_completed_total", {"outcome=\"retry\""}), 3);
    EXPECT_EQ(metric_sum(metrics, "conveyor_job_retry_delay_seconds_count"), 3);
    EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
}

TEST_F(WorkerTest, AJobOutOfAttemptsIsDeadLetteredWithEverythingItCarried) {
    auto worker = start_worker({"--retry", "diag.*=attempts:2,base:1s"}, "attempts-exhausted");
    auto job = Broker::job("diag.fail", R"({"times": 5})", "gives-up");
    job.properties.correlation_id = "order-42";
    amqp::set_header(job.properties.headers, "traceparent",
                     std::string("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    broker_.publish(std::move(job));
    const auto dead = broker_.take("conveyor.diag.dlq", 1, 30s);
    ASSERT_EQ(dead.size(), 1U) << worker.process->log();
    const auto& letter = dead[0];
    EXPECT_EQ(header_text(letter, "x-conveyor-reason"), "attempts_exhausted");
    EXPECT_EQ(header_text(letter, "x-conveyor-attempts"), "2");
    EXPECT_NE(header_text(letter, "x-conveyor-error").find("failing attempt 2 of 5"), std::string::npos)
        << header_text(letter, "x-conveyor-error");
    EXPECT_EQ(header_text(letter, "x-conveyor-original-routing-key"), "diag.fail");
    EXPECT_EQ(letter.message.properties.correlation_id, "order-42");
    EXPECT_EQ(header_text(letter, "traceparent"), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    EXPECT_EQ(letter.message.body, R"({"times": 5})");
    EXPECT_EQ(worker.metric("conveyor_jobs_completed_total", {"outcome=\"retry\""}), 1);
}

/// Sends a message into the delay ladder as the worker does, bound for the diag queue.
void publish_delayed(Broker& broker, const std::string& id, std::chrono::seconds delay) {
    auto message = Broker::job("diag.noop", "{}", id);
    message.exchange = topology::delay_entry_exchange();
    message.routing_key = topology::delay_routing_key(delay, "diag.noop");
    broker.publish(std::move(message));
}

TEST_F(WorkerTest, TheDelayLadderDeliversShortDelaysPastLongOnesAndEachOnTime) {
    const auto start = std::chrono::steady_clock::now();
    publish_delayed(broker_, "seven-seconds", 7s);
    publish_delayed(broker_, "two-seconds", 2s);
    publish_delayed(broker_, "one-second", 1s);
    std::vector<std::pair<std::string, milliseconds>> arrivals;
    while (arrivals.size() < 3 && std::chrono::steady_clock::now() - start < 20s) {
        for (const auto& delivery : broker_.take("conveyor.diag", 1, 200ms)) {
            arrivals.emplace_back(delivery.message.properties.message_id,
                                  std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start));
            EXPECT_EQ(topology::job_type_of_routing_key(delivery.message.routing_key), "diag.noop");
        }
    }
    ASSERT_EQ(arrivals.size(), 3U);
    const std::vector<std::pair<std::string, std::int64_t>> expected{
        {"one-second", 1000}, {"two-seconds", 2000}, {"seven-seconds", 7000}};
    for (std::size_t i = 0; i < expected.size(); ++i) {
        std::printf("{\"name\":\"delay_ladder\",\"delay_ms\":%lld,\"measured_ms\":%lld}\n",
                    static_cast<long long>(expected[i].second), static_cast<long long>(arrivals[i].second.count()));
        EXPECT_EQ(arrivals[i].first, expected[i].first);
        EXPECT_GE(arrivals[i].second.count(), expected[i].second - 50);
        EXPECT_LE(arrivals[i].second.count(), expected[i].second + 1000);
    }
}

TEST_F(WorkerTest, DelayedMessagesSurviveABrokerRestart) {
    const auto start = std::chrono::steady_clock::now();
    publish_delayed(broker_, "outlives-restart", 30s);
    const auto [status, output] =
        run_command({(source_dir() / "deploy/local/services").string(), "restart", "rabbitmq"}, 120s);
    ASSERT_EQ(status, 0) << output;
    const auto restarted = std::chrono::steady_clock::now() - start;
    Broker after_restart;
    after_restart.connect();
    std::vector<amqp::Delivery> arrived;
    while (arrived.empty() && std::chrono::steady_clock::now() - start < 45s) {
        arrived = after_restart.take("conveyor.diag", 1, 500ms);
    }
    const auto waited = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
    std::printf("{\"name\":\"delay_after_restart\",\"delay_ms\":30000,\"restart_ms\":%lld,\"measured_ms\":%lld}\n",
                static_cast<long long>(std::chrono::duration_cast<milliseconds>(restarted).count()),
                static_cast<long long>(waited.count()));
    ASSERT_EQ(arrived.size(), 1U);
    EXPECT_EQ(arrived[0].message.properties.message_id, "outlives-restart");
    EXPECT_GE(waited, 29s);
    // A level whose messages came due while the broker was down expires them once its queue has recovered, so the
    // message is due at 30 s or when the restart is over, whichever is later (a restart takes 7 s here and over
    // 20 s on a loaded CI machine), then takes a few seconds through the recovered levels.
    EXPECT_LE(waited, std::max<std::chrono::steady_clock::duration>(30s, restarted) + 10s);
}

}  // namespace
}  // namespace conveyor::testing
