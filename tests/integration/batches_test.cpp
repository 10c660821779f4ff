// Batches against the real broker and database, with worker and scheduler processes: members added over AMQP and
// through the CLI, a seal, and the callback job enqueued exactly once when every member has ended, through a worker
// killed with SIGKILL midway.
#include <fmt/format.h>

#include <csignal>
#include <filesystem>
#include <iostream>
#include <thread>

#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/pg.hpp"
#include "scheduler_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class BatchesTest : public SchedulerFixture {
  protected:
    void SetUp() override {
        SchedulerFixture::SetUp();
        database_.query("TRUNCATE conveyor.batches, conveyor.batch_members, conveyor.scheduled_jobs");
    }

    /// Runs the CLI with the database's URL; returns its exit status and output.
    std::pair<int, std::string> cli(std::vector<std::string> args) {
        args.insert(args.begin(), (binary_dir() / "conveyor").string());
        args.insert(args.end(), {"--amqp-url", amqp_url(), "--pg-url", pg_url()});
        return run_command(args, 120s);
    }

    static amqp::Message member(const std::string& type, const std::string& body, const std::string& batch,
                                const std::string& job_id) {
        auto message = Broker::job(type, body, job_id);
        amqp::set_header(message.properties.headers, job_headers::kBatch, batch);
        return message;
    }

    /// The SQLSTATE of a statement the database refuses; empty if it succeeds.
    std::string refusal(const std::string& sql) {
        try {
            database_.query(sql);
        } catch (const pg::Error& e) {
            return e.sqlstate();
        }
        return {};
    }

    std::string batch_field(const std::string& batch, const std::string& field) {
        const auto rows = database_.query(
            fmt::format("SELECT coalesce({}::text, '') FROM conveyor.batches WHERE id = $1", field), {batch});
        return rows.empty() ? std::string() : rows[0][0];
    }
};

/// 10,000 members published over AMQP, 100 of which fail for good, the batch sealed with the count; the worker
/// running them is killed with SIGKILL a third of the way through and another takes over. The callback (a
/// diag.ledger job, which records its own id once) runs once, with 9,900 succeeded and 100 dead-lettered.
TEST_F(BatchesTest, ATenThousandJobBatchCallsBackOnceWithItsCountsThroughAWorkerKill) {
    constexpr int kMembers = 10'000;
    constexpr int kFailing = 100;
    auto scheduler = start_scheduler({}, "batches-scheduler");
    const auto [opened, id] = cli({"batches", "open", "--id", "import-7", "--callback", "diag.ledger",
                                   "--callback-payload", R"({"source": "import"})"});
    ASSERT_EQ(opened, 0) << id;
    EXPECT_EQ(id, "import-7\n");
    std::vector<amqp::Message> members;
    members.reserve(kMembers);
    for (int n = 0; n < kMembers; ++n) {
        members.push_back(
            n % (kMembers / kFailing) == 0
                ? member("diag.fail", R"({"times": 1, "permanent": true})", "import-7", fmt::format("member-{}", n))
                : member("diag.sleep", R"({"ms": 10})", "import-7", fmt::format("member-{}", n)));
    }
    broker_.publish_all(std::move(members));
    const auto [sealed, shown] = cli({"batches", "seal", "import-7", "--expect", std::to_string(kMembers)});
    ASSERT_EQ(sealed, 0) << shown;
    EXPECT_NE(shown.find("sealed"), std::string::npos) << shown;

    auto first = start_worker({"--concurrency", "20", "--name", "batch-first"}, "batch-first");
    ASSERT_TRUE(eventually([&] { return first.succeeded() >= kMembers / 3.0; }, 120s));
    // The kill lands while the worker records ends: a session holds the batch's row for 3 s, so the ends being
    // recorded wait (a worker that acknowledged a member before its end was recorded would lose it here).
    const std::string hold_the_row =
        "BEGIN; SELECT 1 FROM conveyor.batches WHERE id = 'import-7' FOR UPDATE; SELECT pg_sleep(3); COMMIT;";
    Process holder("/usr/bin/psql", {"-X", "-q", "-d", pg_url(), "-c", hold_the_row},
                   std::filesystem::temp_directory_path() / "conveyor-batch-holder.log");
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar(
                       "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3)%' AND "
                       "state = 'active' AND pid <> pg_backend_pid()") == 1;
        },
        10s));
    std::this_thread::sleep_for(500ms);
    first.process->signal(SIGKILL);
    first.process->wait(10s);
    EXPECT_EQ(holder.wait(30s), std::optional<int>(0)) << holder.log();
    EXPECT_TRUE(batch_field("import-7", "finished_at").empty()) << "the batch finished a third of the way";
    auto second = start_worker({"--concurrency", "20", "--name", "batch-second"}, "batch-second");
    ASSERT_TRUE(eventually([&] { return !batch_field("import-7", "finished_at").empty(); }, 180s))
        << cli({"batches", "show", "import-7"}).second;

    const auto [status, json] = cli({"batches", "show", "import-7", "--json"});
    ASSERT_EQ(status, 0) << json;
    EXPECT_NE(json.find(R"("ended_by_state":{"succeeded":9900,"dead_lettered":100,"cancelled":0,"deduplicated":0})"),
              std::string::npos)
        << json;
    const auto callback = batch_field("import-7", "callback_job_id");
    ASSERT_FALSE(callback.empty());
    const auto payload =
        database_.query("SELECT payload::text FROM conveyor.scheduled_jobs WHERE id = $1::uuid", {callback});
    ASSERT_EQ(payload.size(), 1U);
    for (const auto* part : {R"("source": "import")", R"("succeeded": 9900)", R"("dead_lettered": 100)",
                             R"("total": 10000)", R"("id": "import-7")"}) {
        EXPECT_NE(payload[0][0].find(part), std::string::npos) << payload[0][0];
    }
    // The callback ran, once: its ledger row, and one success in the history.
    EXPECT_TRUE(eventually(
        [&] {
            return database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE job_id = $1", {callback}) == 1;
        },
        60s));
    std::this_thread::sleep_for(2s);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE job_id = $1", {callback}), 1);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.scheduled_jobs WHERE source = 'batch:import-7'"), 1)
        << "the callback was enqueued more than once";
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.batch_members WHERE batch_id = 'import-7'"), kMembers);
    std::cout << fmt::format(
        "[ figures  ] batch of {} members ({} failing for good), worker killed after {:.0f}: "
        "called back once with 9,900 / 100\n",
        kMembers, kFailing, static_cast<double>(kMembers) / 3);
}

/// Members added through the CLI count in the batch before they are published; a sealed batch takes no more, and
/// bad requests say what is wrong and change nothing.
TEST_F(BatchesTest, TheCliOpensFillsSealsAndShowsABatchAndRefusesWhatItCannotDo) {
    auto worker = start_worker({"--name", "batch-cli"}, "batch-cli");
    const auto [opened, id] = cli({"batches", "open", "--description", "three noops"});
    ASSERT_EQ(opened, 0) << id;
    const auto batch = id.substr(0, id.find('\n'));
    EXPECT_TRUE(batch.starts_with("batch-")) << batch;
    const auto [added, ids] = cli({"batches", "add", batch, "diag.noop", "--count", "3"});
    ASSERT_EQ(added, 0) << ids;
    EXPECT_EQ(batch_field(batch, "added"), "3");
    ASSERT_TRUE(eventually([&] { return worker.succeeded() == 3; }, 30s));
    EXPECT_TRUE(batch_field(batch, "finished_at").empty()) << "a batch finished before its seal";
    const auto [sealed, shown] = cli({"batches", "seal", batch});
    ASSERT_EQ(sealed, 0) << shown;
    EXPECT_NE(shown.find("ended     3 of 3 (100.0%): 3 succeeded"), std::string::npos) << shown;
    EXPECT_FALSE(batch_field(batch, "finished_at").empty()) << "sealed after its members ended, it did not finish";
    EXPECT_TRUE(batch_field(batch, "callback_job_id").empty()) << "a batch without a callback enqueued one";

    const auto [late, late_output] = cli({"batches", "add", batch, "diag.noop"});
    EXPECT_EQ(late, 2);
    EXPECT_NE(late_output.find("is sealed: it takes no more members"), std::string::npos) << late_output;
    EXPECT_EQ(batch_field(batch, "added"), "3");
    const auto [twice, twice_output] = cli({"batches", "seal", batch});
    EXPECT_EQ(twice, 2);
    EXPECT_NE(twice_output.find("is sealed already"), std::string::npos) << twice_output;
    const auto [taken, taken_output] = cli({"batches", "open", "--id", batch});
    EXPECT_EQ(taken, 2);
    EXPECT_NE(taken_output.find("exists already"), std::string::npos) << taken_output;
    const auto [bad, bad_output] = cli({"batches", "open", "--callback-payload", "[1]"});
    EXPECT_EQ(bad, 2);
    EXPECT_NE(bad_output.find("must be a JSON object"), std::string::npos) << bad_output;
    const auto [untyped, untyped_output] = cli({"batches", "open", "--callback", "not a type"});
    EXPECT_EQ(untyped, 2);
    EXPECT_NE(untyped_output.find("is not a job type"), std::string::npos) << untyped_output;
    const auto [unknown, unknown_output] = cli({"batches", "show", "no-such-batch"});
    EXPECT_EQ(unknown, 2);
    EXPECT_NE(unknown_output.find("no batch no-such-batch"), std::string::npos) << unknown_output;
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.batches"), 1) << "a refused request stored a batch";
}

/// The HTTP API opens, follows and seals a batch (the enqueue scope); a wrong request gets 400, an unknown batch
/// 404, a batch in the wrong state 409, and none of them changes anything.
TEST_F(BatchesTest, TheApiOpensShowsAndSealsABatchWithAClearStatusForEachRefusal) {
    auto scheduler = start_scheduler_with_tokens("batches-api");
    auto worker = start_worker({"--name", "batch-api"}, "batch-api");
    const std::string token = "enqueue-secret";
    const auto opened = call_api(scheduler.port, "POST", "/v1/batches", token,
                                 R"({"id": "api-1", "callback": "diag.noop", "callback_payload": {"k": 1}})");
    ASSERT_EQ(opened.status, 201) << opened.body;
    EXPECT_NE(opened.body.find(R"("state":"open")"), std::string::npos) << opened.body;
    EXPECT_NE(opened.body.find(R"("opened_by":"api:orders-service")"), std::string::npos) << opened.body;
    const auto [added, ids] = cli({"batches", "add", "api-1", "diag.noop", "--count", "2"});
    ASSERT_EQ(added, 0) << ids;
    const auto sealed = call_api(scheduler.port, "POST", "/v1/batches/api-1/seal", token, R"({"expected": 2})");
    ASSERT_EQ(sealed.status, 200) << sealed.body;
    ASSERT_TRUE(eventually(
        [&] {
            return call_api(scheduler.port, "GET", "/v1/batches/api-1", token).body.find(R"("state":"finished")") !=
                   std::string::npos;
        },
        30s));
    const auto shown = call_api(scheduler.port, "GET", "/v1/batches/api-1", token);
    EXPECT_NE(shown.body.find(R"("ended_by_state":{"succeeded":2,)"), std::string::npos) << shown.body;

    EXPECT_EQ(call_api(scheduler.port, "GET", "/v1/batches/nope", token).status, 404);
    EXPECT_EQ(call_api(scheduler.port, "POST", "/v1/batches/nope/seal", token).status, 404);
    const auto twice = call_api(scheduler.port, "POST", "/v1/batches/api-1/seal", token);
    EXPECT_EQ(twice.status, 409) << twice.body;
    EXPECT_NE(twice.body.find("is sealed already"), std::string::npos) << twice.body;
    EXPECT_EQ(call_api(scheduler.port, "POST", "/v1/batches", token, R"({"id": "api-1"})").status, 409);
    const auto unknown_field = call_api(scheduler.port, "POST", "/v1/batches", token, R"({"size": 3})");
    EXPECT_EQ(unknown_field.status, 400);
    EXPECT_NE(unknown_field.body.find("unknown field 'size'"), std::string::npos) << unknown_field.body;
    EXPECT_EQ(call_api(scheduler.port, "POST", "/v1/batches", token, R"({"callback_payload": [1]})").status, 400);
    EXPECT_EQ(call_api(scheduler.port, "POST", "/v1/batches", "", "{}").status, 401);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.batches"), 1) << "a refused request stored a batch";
}

/// Members join through conveyor.enqueue() in the caller's transaction (a rollback adds none, a replayed
/// idempotency key adds none), through POST /v1/jobs and through conveyor enqueue --in; the relay publishes them
/// with the batch's header. A member cancelled before it was published, and one the relay could not route, end
/// there, so the batch still finishes, with each counted as it ended.
TEST_F(BatchesTest, MembersJoinThroughSqlHttpAndTheCliAndOnesThatNeverReachAWorkerStillEnd) {
    auto scheduler = start_scheduler_with_tokens("batches-ways-in");
    auto worker = start_worker({"--name", "batch-ways-in"}, "batch-ways-in");
    const std::string token = "enqueue-secret";
    ASSERT_EQ(cli({"batches", "open", "--id", "mixed", "--callback", "diag.ledger"}).first, 0);

    EXPECT_EQ(refusal("DO $$ BEGIN PERFORM conveyor.enqueue('diag.noop', '{}', batch => 'mixed'); "
                      "RAISE EXCEPTION 'the business transaction failed'; END $$"),
              "P0001");
    EXPECT_EQ(batch_field("mixed", "added"), "0") << "a rolled-back member was counted";
    const std::string keyed = "SELECT conveyor.enqueue('diag.noop', '{}', idempotency_key => 'k1', batch => 'mixed')";
    database_.query(keyed);
    database_.query(keyed);
    EXPECT_EQ(batch_field("mixed", "added"), "1") << "a replayed idempotency key was counted again";
    EXPECT_EQ(refusal("SELECT conveyor.enqueue('diag.noop', '{}', idempotency_key => 'k1')"), "23505");
    EXPECT_EQ(refusal("SELECT conveyor.enqueue('diag.noop', '{}', batch => 'nope')"), "P0002");
    database_.query("SELECT conveyor.enqueue('nowhere.job', '{}', batch => 'mixed')");

    const auto listed = call_api(scheduler.port, "POST", "/v1/jobs", token,
                                 R"({"jobs": [{"type": "diag.noop", "batch": "mixed"},
                                              {"type": "diag.noop", "batch": "mixed", "priority": "high"}]})");
    EXPECT_EQ(listed.status, 202) << listed.body;
    const auto unknown = call_api(scheduler.port, "POST", "/v1/jobs", token,
                                  R"({"jobs": [{"type": "diag.noop", "batch": "mixed"},
                                               {"type": "diag.noop", "batch": "nope"}]})");
    EXPECT_EQ(unknown.status, 404) << unknown.body;
    EXPECT_NE(unknown.body.find("no batch nope"), std::string::npos) << unknown.body;
    const auto malformed = call_api(scheduler.port, "POST", "/v1/jobs", token, R"({"type": "diag.noop", "batch": 7})");
    EXPECT_EQ(malformed.status, 400) << malformed.body;

    const auto delayed_member = [&] {
        return run_command({(binary_dir() / "conveyor").string(), "enqueue", "diag.noop", "--batch", "mixed", "--in",
                            "1h", "--pg-url", pg_url()},
                           30s);
    };
    const auto [scheduled, scheduled_id] = delayed_member();
    ASSERT_EQ(scheduled, 0) << scheduled_id;
    EXPECT_EQ(batch_field("mixed", "added"), "5")
        << "the members are the key's, the unroutable, two by HTTP, one delayed";
    const auto [cancelled, cancel_output] = run_command(
        {(binary_dir() / "conveyor").string(), "scheduled", "--pg-url", pg_url(), "cancel", scheduled_id.substr(0, 36)},
        30s);
    ASSERT_EQ(cancelled, 0) << cancel_output;

    const auto sealed = call_api(scheduler.port, "POST", "/v1/batches/mixed/seal", token);
    ASSERT_EQ(sealed.status, 200) << sealed.body;
    ASSERT_TRUE(eventually([&] { return !batch_field("mixed", "finished_at").empty(); }, 30s))
        << cli({"batches", "show", "mixed"}).second << scheduler.process->log();
    const auto shown = call_api(scheduler.port, "GET", "/v1/batches/mixed", token);
    EXPECT_NE(shown.body.find(R"("ended_by_state":{"succeeded":3,"dead_lettered":1,"cancelled":1,"deduplicated":0})"),
              std::string::npos)
        << shown.body;
    const auto callback = batch_field("mixed", "callback_job_id");
    EXPECT_TRUE(eventually(
        [&] {
            return database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE job_id = $1", {callback}) == 1;
        },
        30s));

    EXPECT_EQ(refusal("SELECT conveyor.enqueue('diag.noop', '{}', batch => 'mixed')"), "55000");
    const auto late = call_api(scheduler.port, "POST", "/v1/jobs", token, R"({"type": "diag.noop", "batch": "mixed"})");
    EXPECT_EQ(late.status, 409) << late.body;
    EXPECT_NE(late.body.find("is sealed"), std::string::npos) << late.body;
    const auto [late_delayed, late_delayed_output] = delayed_member();
    EXPECT_EQ(late_delayed, 2) << late_delayed_output;
    EXPECT_NE(late_delayed_output.find("batch mixed is sealed"), std::string::npos) << late_delayed_output;
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.scheduled_jobs WHERE batch_id IS NOT NULL"), 5)
        << "a refused member was stored";

    // A batch sealed expecting members that never come shows in the scheduler's gauges, the finished one does not.
    ASSERT_EQ(call_api(scheduler.port, "POST", "/v1/batches", token, R"({"id": "never-filled"})").status, 201);
    ASSERT_EQ(call_api(scheduler.port, "POST", "/v1/batches/never-filled/seal", token, R"({"expected": 10})").status,
              200);
    EXPECT_TRUE(eventually(
        [&] {
            return scheduler.metric("conveyor_batches_unfinished", {"state=\"sealed\""}) == 1 &&
                   scheduler.metric("conveyor_batch_members_unended") == 10;
        },
        15s))
        << scheduler.metric("conveyor_batches_unfinished", {"state=\"sealed\""}) << " sealed, "
        << scheduler.metric("conveyor_batch_members_unended") << " members unended";
    EXPECT_EQ(scheduler.metric("conveyor_batches_unfinished", {"state=\"open\""}), 0);
}

}  // namespace
}  // namespace conveyor::testing
