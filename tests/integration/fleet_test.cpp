// What operators read during and after an incident, against real workers, a real scheduler and the real CLI: the
// workers on record by their heartbeats (running, stopped cleanly, gone after a SIGKILL), and the audit log of every
// change, written with the change by whichever way in asked for it and kept with the job's record.
#include <fmt/format.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <set>

#include "scheduler_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

class FleetTest : public SchedulerFixture {
  protected:
    void SetUp() override {
        SchedulerFixture::SetUp();
        run_ = fmt::format("fleet-{}", ::getpid());
    }

    SchedulerUnderTest start_scheduler_with_roles(const std::string& log_name, std::vector<std::string> args = {}) {
        const auto tokens = write_file(log_name + "-tokens",
                                       fmt::format(R"(tokens:
  - name: ops
    sha256: {}
    role: admin
  - name: olga
    sha256: {}
    role: operator
  - name: vera
    sha256: {}
    role: viewer
)",
                                                   sha256("ops-secret"), sha256("olga-secret"), sha256("vera-secret")));
        args.insert(args.end(), {"--api-tokens-file", tokens.string()});
        return start_scheduler(std::move(args), log_name);
    }

    /// The worker named `name` in GET /v1/workers, or an empty object.
    static boost::json::object worker_named(std::uint16_t port, const std::string& name) {
        const auto response = call_api(port, "GET", "/v1/workers", "vera-secret");
        EXPECT_EQ(response.status, 200) << response.body;
        const auto listed = boost::json::parse(response.body);
        for (const auto& worker : listed.at("workers").as_array()) {
            if (worker.at("name").as_string() == name) {
                return worker.as_object();
            }
        }
        return {};
    }

    static std::string state_of(std::uint16_t port, const std::string& name) {
        const auto worker = worker_named(port, name);
        return worker.contains("state") ? std::string(worker.at("state").as_string()) : "absent";
    }

    /// The audit entries of GET /v1/audit with `query`, newest first.
    static boost::json::array audit(std::uint16_t port, const std::string& query) {
        const auto response = call_api(port, "GET", "/v1/audit?" + query, "vera-secret");
        EXPECT_EQ(response.status, 200) << response.body;
        return boost::json::parse(response.body).at("entries").as_array();
    }

    std::string run_;
};

TEST_F(FleetTest, WorkersShowRunningWithTheirLoadStoppedAfterATermAndGoneThreeHeartbeatsAfterAKill) {
    auto scheduler = start_scheduler_with_roles("fleet-workers-scheduler");
    const auto steady = run_ + "-steady";
    const auto doomed = run_ + "-doomed";
    auto stopping =
        start_worker({"--name", steady, "--heartbeat-interval", "1s", "--concurrency", "4", "--shutdown-grace", "1s"},
                     "fleet-steady");
    auto killed = start_worker({"--name", doomed, "--heartbeat-interval", "1s", "--concurrency", "4"}, "fleet-doomed");
    ASSERT_TRUE(eventually([&] { return state_of(scheduler.port, steady) == "running"; }, 10s));
    ASSERT_TRUE(eventually([&] { return state_of(scheduler.port, doomed) == "running"; }, 10s));
    const auto shown = worker_named(scheduler.port, doomed);
    EXPECT_EQ(shown.at("concurrency").as_int64(), 4);
    EXPECT_EQ(shown.at("queues").as_array(), boost::json::array({"diag"}));
    EXPECT_EQ(shown.at("pid").as_int64(), killed.process->pid());
    EXPECT_FALSE(shown.at("version").as_string().empty());
    EXPECT_EQ(shown.at("circuit_breakers"), boost::json::object({{"payment_gateway", "closed"}}));

    // Both take long jobs; the heartbeat reports what runs.
    publish_sleeps(8, 30'000);
    ASSERT_TRUE(eventually(
        [&] {
            return worker_named(scheduler.port, doomed).at("in_flight").as_int64() == 4 &&
                   worker_named(scheduler.port, steady).at("in_flight").as_int64() == 4;
        },
        15s))
        << "the heartbeats did not report the jobs in flight";

    killed.process->signal(SIGKILL);
    const auto killed_at = std::chrono::steady_clock::now();
    ASSERT_TRUE(eventually([&] { return state_of(scheduler.port, doomed) == "gone"; }, 10s));
    EXPECT_GE(std::chrono::steady_clock::now() - killed_at, 1900ms)
        << "gone before it missed three heartbeats (the last came at most 1 s before the kill)";
    EXPECT_EQ(state_of(scheduler.port, steady), "running");

    stopping.process->signal(SIGTERM);
    EXPECT_EQ(stopping.process->wait(30s), std::optional<int>(0)) << stopping.process->log();
    EXPECT_EQ(state_of(scheduler.port, steady), "stopped") << "a clean shutdown is marked at once";
    const auto listed = run_cli({"workers", "--pg-url", pg_url(), "--json"});
    const auto cli = boost::json::parse(listed).at("workers").as_array();
    const auto named = [&](const std::string& name) {
        return std::count_if(cli.begin(), cli.end(), [&](const auto& worker) {
            return worker.at("name").as_string() == name && worker.at("state").as_string() != "running";
        });
    };
    EXPECT_EQ(named(steady), 1) << listed;
    EXPECT_EQ(named(doomed), 1) << listed;
    stop(scheduler);
}

TEST_F(FleetTest, TheAuditLogRecordsWhoChangedWhatByEveryWayInAndKeepsItWithTheJob) {
    auto scheduler = start_scheduler_with_roles("fleet-audit-scheduler");
    const auto port = scheduler.port;
    const auto since = database_.scalar("SELECT coalesce(max(id), 0) FROM conveyor.audit_log");
    EXPECT_EQ(call_api(port, "POST", "/v1/queues/diag/pause", "olga-secret").status, 200);
    EXPECT_EQ(call_api(port, "POST", "/v1/queues/diag/pause", "olga-secret").status, 200);
    EXPECT_EQ(call_api(port, "POST", "/v1/queues/diag/resume", "olga-secret").status, 200);
    const auto cancelled = run_ + "-cancelled";
    EXPECT_EQ(call_api(port, "DELETE", "/v1/jobs/" + cancelled, "olga-secret").status, 202);
    // The CLI names its operator user@host; `env` sets the user.
    const auto [status, output] =
        run_command({"/usr/bin/env", "USER=carol", (binary_dir() / "conveyor").string(), "--amqp-url", amqp_url(),
                     "queues", "pause", "diag", "--type", "diag.sleep", "--pg-url", pg_url()},
                    30s);
    ASSERT_EQ(status, 0) << output;
    run_cli({"queues", "resume", "diag", "--type", "diag.sleep", "--pg-url", pg_url()});

    // A job that fails for good, replayed by the operator (after a dry run that changes nothing), fails again and
    // is purged by the admin.
    auto worker = start_worker({}, "fleet-audit-worker");
    const auto failing = run_ + "-failing";
    const auto fails_again = [&] {
        broker_.publish(Broker::job("diag.fail", R"({"times": 9, "permanent": true})", failing));
        return eventually(
            [&] {
                return database_.scalar(
                           "SELECT count(*) FROM conveyor.dead_letters WHERE job_id = $1 AND state = 'dead'",
                           {failing}) == 1;
            },
            30s);
    };
    ASSERT_TRUE(fails_again()) << scheduler.process->log();
    const auto only_it = fmt::format(R"({{"filter": {{"job_id": "{}"}}}})", failing);
    const auto dry = fmt::format(R"({{"filter": {{"job_id": "{}"}}, "dry_run": true}})", failing);
    EXPECT_EQ(call_api(port, "POST", "/v1/dead-letters/replay", "olga-secret", dry).status, 200);
    EXPECT_EQ(call_api(port, "POST", "/v1/dead-letters/replay", "olga-secret", only_it).status, 200);
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar("SELECT count(*) FROM conveyor.dead_letters WHERE job_id = $1 AND state = 'dead'",
                                    {failing}) == 1;
        },
        30s))
        << "the replayed job did not fail again";
    EXPECT_EQ(call_api(port, "POST", "/v1/dead-letters/purge", "ops-secret", only_it).status, 200);

    std::vector<std::string> seen;
    for (const auto& entry : audit(port, "limit=20")) {
        if (entry.at("id").as_int64() <= since) {
            continue;
        }
        std::string actor(entry.at("actor").as_string());
        if (actor.starts_with("carol@")) {
            actor = "carol@host";
        }
        seen.insert(seen.begin(), fmt::format("{} {} {}", actor, entry.at("action").as_string().c_str(),
                                              entry.at("target").as_string().c_str()));
    }
    const std::vector<std::string> expected{"api:olga pause diag",
                                            "api:olga resume diag",  // the second pause changed nothing
                                            "api:olga cancel " + cancelled,
                                            "carol@host pause diag.sleep",
                                            "resume diag.sleep",
                                            "api:olga replay dead letters job=" + failing,
                                            "api:ops purge dead letters job=" + failing};
    ASSERT_EQ(seen.size(), expected.size()) << fmt::format("{}", fmt::join(seen, "\n"));
    for (std::size_t i = 0; i < expected.size(); ++i) {
        EXPECT_TRUE(seen[i].ends_with(expected[i])) << seen[i] << " is not " << expected[i];
    }

    // Kept with the job: its record shows who replayed and who purged it.
    ApiResponse job;
    ASSERT_TRUE(eventually(
        [&] {
            job = call_api(port, "GET", "/v1/jobs/" + failing, "vera-secret");
            return job.status == 200;
        },
        10s))
        << "the worker's history never recorded the job: " << job.body;
    const auto kept = boost::json::parse(job.body).at("audit").as_array();
    ASSERT_EQ(kept.size(), 2U) << job.body;
    EXPECT_EQ(kept[0].at("action").as_string(), "purge");
    EXPECT_EQ(kept[0].at("details").at("count").as_int64(), 1);
    EXPECT_EQ(kept[1].at("action").as_string(), "replay");
    EXPECT_EQ(kept[1].at("details").at("replayed").as_int64(), 1);
    EXPECT_EQ(audit(port, "job_id=" + failing + "&action=purge").size(), 1U);
    EXPECT_EQ(audit(port, "actor=api:ops").front().at("action").as_string(), "purge");
    const auto shown = run_cli({"jobs", "show", failing, "--pg-url", pg_url()});
    EXPECT_NE(shown.find("replay"), std::string::npos) << shown;
    EXPECT_NE(shown.find("api:ops"), std::string::npos) << shown;

    const auto bad = call_api(port, "GET", "/v1/audit?action=delete", "vera-secret");
    EXPECT_EQ(bad.status, 400);
    EXPECT_NE(bad.body.find("action: delete is not one of"), std::string::npos) << bad.body;
    EXPECT_EQ(call_api(port, "GET", "/v1/audit", "").status, 401);
    stop(scheduler);
}

/// The overview shows the alerts Prometheus has, as Prometheus has them (the local stack's, with Conveyor's rules),
/// and is still served, saying why, when Prometheus does not answer.
TEST_F(FleetTest, TheOverviewShowsPrometheusAlertsAndCopesWithoutPrometheus) {
    const char* configured = std::getenv("CONVEYOR_PROMETHEUS_URL");
    const std::string prometheus = configured != nullptr ? configured : "http://127.0.0.1:9090";
    auto scheduler = start_scheduler_with_roles("fleet-prometheus-on", {"--prometheus-url", prometheus});
    const auto overview = [](std::uint16_t port) {
        const auto response = call_api(port, "GET", "/v1/overview", "vera-secret");
        EXPECT_EQ(response.status, 200) << response.body;
        return boost::json::parse(response.body).at("prometheus");
    };
    const auto names = [](const boost::json::array& alerts, std::string_view name_key) {
        std::set<std::string> found;
        for (const auto& alert : alerts) {
            const auto& name = name_key == "name" ? alert.at("name") : alert.at("labels").at("alertname");
            found.insert(std::string(name.as_string()));
        }
        return found;
    };
    const auto [status, truth] = run_command({"/usr/bin/curl", "-sS", prometheus + "/api/v1/alerts"}, 10s);
    ASSERT_EQ(status, 0) << truth;
    const auto expected = names(boost::json::parse(truth).at("data").at("alerts").as_array(), "labels");
    const auto shown = overview(scheduler.port);
    ASSERT_TRUE(shown.is_object() && shown.as_object().contains("alerts")) << boost::json::serialize(shown);
    EXPECT_EQ(names(shown.at("alerts").as_array(), "name"), expected);
    stop(scheduler);

    auto unreachable = start_scheduler_with_roles("fleet-prometheus-down", {"--prometheus-url", "http://127.0.0.1:1"});
    const auto missing = overview(unreachable.port);
    EXPECT_TRUE(missing.is_object() && missing.as_object().contains("error")) << boost::json::serialize(missing);
    stop(unreachable);
}

}  // namespace
}  // namespace conveyor::testing
