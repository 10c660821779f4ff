// The job history: every job a worker takes is on record, written off the job's path, readable by id and by filter
// from the CLI and the HTTP API.
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <cctype>
#include <set>

#include "scheduler_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

/// A query parameter's value, percent-encoded (RFC 3986 unreserved characters stay).
std::string url_encode(std::string_view text) {
    std::string encoded;
    for (const char c : text) {
        if (std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '.' || c == '_' || c == '~') {
            encoded += c;
        } else {
            encoded += fmt::format("%{:02X}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        }
    }
    return encoded;
}

void stop_worker(WorkerUnderTest& worker) {
    worker.process->signal(SIGTERM);
    EXPECT_EQ(worker.process->wait(30s), std::optional<int>(0)) << worker.process->log();
}

class JobHistoryTest : public SchedulerFixture {
  protected:
    /// `conveyor jobs show ID --json`, parsed; null if the CLI found no such job.
    boost::json::value show(const std::string& job_id) {
        const auto cli = (binary_dir() / "conveyor").string();
        auto [status, output] =
            run_command({cli, "jobs", "show", job_id, "--json", "--pg-url", pg_url()}, std::chrono::seconds(30));
        if (status != 0) {
            return nullptr;
        }
        return boost::json::parse(output);
    }

    static std::string state_of(const boost::json::value& job) {
        return job.is_object() ? std::string(job.at("state").as_string()) : std::string("(none)");
    }
};

TEST_F(JobHistoryTest, TheRecordOfAJobThatFailedTwiceShowsThreeAttemptsWithTheirErrors) {
    auto worker = start_worker({"--retry", "diag.fail=attempts:5,base:1s,cap:1s"}, "history-fail");
    broker_.publish(Broker::job("diag.fail", R"({"times": 2})", "history-fails-twice"));
    boost::json::value job;
    ASSERT_TRUE(eventually(
        [&] {
            job = show("history-fails-twice");
            return state_of(job) == "succeeded";
        },
        30s))
        << state_of(job) << "\n"
        << worker.process->log();

    const auto& attempts = job.at("attempts").as_array();
    ASSERT_EQ(attempts.size(), 3U) << boost::json::serialize(job);
    for (std::size_t i = 0; i < 2; ++i) {
        EXPECT_EQ(attempts[i].at("attempt").as_int64(), static_cast<std::int64_t>(i + 1));
        EXPECT_EQ(attempts[i].at("state").as_string(), "retrying");
        EXPECT_EQ(attempts[i].at("error").as_string(), fmt::format("diag.fail: failing attempt {} of 2", i + 1));
        EXPECT_FALSE(attempts[i].at("ended_at").is_null());
    }
    EXPECT_EQ(attempts[2].at("state").as_string(), "succeeded");
    EXPECT_EQ(job.at("type").as_string(), "diag.fail");
    EXPECT_EQ(job.at("queue").as_string(), "conveyor.diag");
    EXPECT_EQ(job.at("trace_id").as_string().size(), 32U);
    stop_worker(worker);
}

TEST_F(JobHistoryTest, EveryJobOfAThousandIsRecordedOnceAndNothingIsDropped) {
    constexpr int kJobs = 1000;
    auto worker = start_worker({}, "history-batch");
    std::vector<amqp::Message> jobs;
    for (int i = 0; i < kJobs; ++i) {
        jobs.push_back(Broker::job("diag.noop", "{}", fmt::format("history-batch-{}", i)));
    }
    broker_.publish_all(std::move(jobs));
    ASSERT_TRUE(eventually([&] { return worker.succeeded() == kJobs; }, 60s)) << worker.process->log();
    const auto recorded = [&] {
        return database_.scalar(
            "SELECT count(DISTINCT job_id) FROM conveyor.job_events WHERE job_id LIKE 'history-batch-%' "
            "AND state = 'succeeded'");
    };
    ASSERT_TRUE(eventually([&] { return recorded() == kJobs; }, 10s)) << recorded();
    // A job that ends within one flush is written as one row: its start is left out.
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.job_events WHERE job_id LIKE 'history-batch-%'"), kJobs);
    EXPECT_GE(worker.metric("conveyor_history_written_total"), kJobs);
    EXPECT_EQ(worker.metric("conveyor_history_dropped_total"), 0);
    stop_worker(worker);
}

TEST_F(JobHistoryTest, ARunningJobShowsItsProgressAndItsEndKeepsTheLastReport) {
    auto worker = start_worker({}, "history-progress");
    broker_.publish(Broker::job("diag.sleep", R"({"ms": 4000})", "history-progress"));
    boost::json::value job;
    ASSERT_TRUE(eventually(
        [&] {
            job = show("history-progress");
            return state_of(job) == "running" && job.at("progress").is_object();
        },
        10s))
        << state_of(job) << "\n"
        << worker.process->log();
    const auto running_fraction = job.at("progress").at("fraction").to_number<double>();
    EXPECT_GT(running_fraction, 0.0);
    EXPECT_LT(running_fraction, 1.0);
    EXPECT_TRUE(job.at("attempts").as_array().back().at("ended_at").is_null());

    ASSERT_TRUE(eventually(
        [&] {
            job = show("history-progress");
            return state_of(job) == "succeeded";
        },
        15s))
        << state_of(job);
    EXPECT_EQ(job.at("progress").at("note").as_string(), "slept 4000 of 4000 ms");
    EXPECT_GE(job.at("attempts").as_array().back().at("duration_ms").as_int64(), 4000);
    stop_worker(worker);
}

TEST_F(JobHistoryTest, AMalformedMessageIsOnRecordAsDeadLetteredWithItsReason) {
    auto worker = start_worker({}, "history-refused");
    // An id with what PostgreSQL's array syntax must escape: the batch writer quotes it.
    const std::string id = R"(history-"invalid"\{1,2} NULL)";
    broker_.publish(Broker::job("diag.sleep", R"({"ms": "soon"})", id));
    boost::json::value job;
    ASSERT_TRUE(eventually(
        [&] {
            job = show(id);
            return state_of(job) == "dead_lettered";
        },
        15s))
        << worker.process->log();
    const auto error = std::string(job.at("attempts").as_array().back().at("error").as_string());
    EXPECT_TRUE(error.starts_with("invalid_payload: ")) << error;
    EXPECT_EQ(job.at("id").as_string(), id);
    stop_worker(worker);
}

TEST_F(JobHistoryTest, TheApiFindsAJobByIdAndPagesThroughAFilteredList) {
    auto scheduler = start_scheduler_with_tokens("history-api");
    auto worker = start_worker({}, "history-api-worker");
    for (int i = 0; i < 3; ++i) {
        broker_.publish(Broker::job("diag.noop", "{}", fmt::format("history-api-{}", i)));
    }
    ASSERT_TRUE(eventually(
        [&] { return database_.scalar("SELECT count(DISTINCT job_id) FROM conveyor.job_events") == 3; }, 15s));

    const auto found = call_api(scheduler.port, "GET", "/v1/jobs/history-api-1", "admin-secret");
    ASSERT_EQ(found.status, 200) << found.body;
    const auto job = boost::json::parse(found.body);
    EXPECT_EQ(job.at("state").as_string(), "succeeded");
    EXPECT_EQ(job.at("attempts").as_array().size(), 1U);
    EXPECT_EQ(call_api(scheduler.port, "GET", "/v1/jobs/history-api-1", "enqueue-secret").status, 403);
    EXPECT_EQ(call_api(scheduler.port, "GET", "/v1/jobs/no-such-job", "admin-secret").status, 404);

    // Three jobs two at a time: the first page says where the next begins, and the two pages do not overlap.
    std::set<std::string> seen;
    std::string path = "/v1/jobs?type=diag.noop&limit=2";
    for (int page = 0; page < 2; ++page) {
        const auto listed = call_api(scheduler.port, "GET", path, "admin-secret");
        ASSERT_EQ(listed.status, 200) << listed.body;
        const auto body = boost::json::parse(listed.body);
        for (const auto& item : body.at("jobs").as_array()) {
            EXPECT_TRUE(seen.insert(std::string(item.at("id").as_string())).second);
        }
        if (page == 0) {
            ASSERT_TRUE(body.at("next").is_string()) << listed.body;
            path = "/v1/jobs?type=diag.noop&limit=2&after=" + url_encode(std::string(body.at("next").as_string()));
        } else {
            EXPECT_TRUE(body.at("next").is_null()) << listed.body;
        }
    }
    EXPECT_EQ(seen, (std::set<std::string>{"history-api-0", "history-api-1", "history-api-2"}));

    const auto bad_state = call_api(scheduler.port, "GET", "/v1/jobs?state=finished", "admin-secret");
    EXPECT_EQ(bad_state.status, 400);
    EXPECT_NE(bad_state.body.find("state: 'finished'"), std::string::npos) << bad_state.body;
    const auto bad_since = call_api(scheduler.port, "GET", "/v1/jobs?since=yesterdayish", "admin-secret");
    EXPECT_EQ(bad_since.status, 400) << bad_since.body;
    stop_worker(worker);
    stop(scheduler);
}

}  // namespace
}  // namespace conveyor::testing
