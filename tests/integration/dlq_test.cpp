// Dead-letter operations against the real broker, database and a local payment gateway: the archiver in
// conveyor-scheduler stores dead letters, `conveyor dlq` and the admin API inspect, group, replay and purge them.
#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <set>
#include <sstream>
#include <thread>

#include "local_servers.hpp"
#include "scheduler_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

struct CliRun {
    int status = -1;
    std::string output;
};

class DlqTest : public SchedulerFixture {
  protected:
    void SetUp() override {
        SchedulerFixture::SetUp();
        run_cli({"topology", "declare"});
        for (const auto& family : {"orders", "inventory", "payments", "emails", "projections", "diag"}) {
            broker_.purge(topology::queue_name(family));
            broker_.purge(topology::dead_letter_queue_name(family));
        }
        for (unsigned level = 0; level < topology::kDelayLevels; ++level) {
            broker_.purge(topology::delay_level_name(level));
        }
        database_.query("TRUNCATE conveyor.dead_letters, conveyor.dead_letter_replays");
        // Job ids of this run: the inbox remembers earlier runs' ids.
        run_ = std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
    }

    /// `conveyor dlq ARGS…` against the test's broker and database.
    CliRun dlq(const std::vector<std::string>& args) {
        std::vector<std::string> command{
            (binary_dir() / "conveyor").string(), "--amqp-url", amqp_url(), "dlq", "--pg-url", pg_url()};
        command.insert(command.end(), args.begin(), args.end());
        auto [status, output] = run_command(command, 180s);
        return {status, output};
    }

    /// Dead letters as the archiver would have stored them, `count` of `type`, with ids `<run>-<prefix>-<n>`.
    void insert_dead_letters(const std::string& prefix, int count, const std::string& type,
                             const std::string& body = "{}") {
        const auto family = type.substr(0, type.find('.'));
        database_.query(
            "INSERT INTO conveyor.dead_letters (job_id, type, family, queue, routing_key, reason, error, "
            "error_pattern, fingerprint, attempts, failed_at, headers, body, archive_key) "
            "SELECT $1 || n, $2, $3, 'conveyor.' || $3 || '.dlq', $2, 'attempts_exhausted', 'timed out after ' || n || "
            "' ms', 'timed out after <n> ms', '00000000000000aa', 3, now() - interval '1 minute', "
            "jsonb_build_object('x-conveyor-attempts', 3, 'x-conveyor-reason', 'attempts_exhausted', "
            "'x-conveyor-error', "
            "'timed out', 'x-conveyor-failed-at', '2026-11-22T08:00:00Z', 'traceparent', "
            "'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'), convert_to($5, 'UTF8'), 'synthetic:' || $1 || "
            "n "
            "FROM generate_series(1, $4::int) AS n",
            {fmt::format("{}-{}-", run_, prefix), type, family, std::to_string(count), body});
    }

    /// A message in a DLQ as the worker leaves it there.
    void dead_letter(const std::string& type, const std::string& job_id, const std::string& reason,
                     const std::string& error, const std::string& failed_at, const std::string& body = "{}") {
        amqp::Message message;
        message.routing_key = topology::dead_letter_queue_name(type.substr(0, type.find('.')));
        message.body = body;
        auto& properties = message.properties;
        properties.message_id = job_id;
        properties.correlation_id = "corr-" + job_id;
        properties.content_type = "application/json";
        amqp::set_header(properties.headers, "x-conveyor-reason", reason);
        amqp::set_header(properties.headers, "x-conveyor-error", error);
        amqp::set_header(properties.headers, "x-conveyor-attempts", std::int64_t{5});
        amqp::set_header(properties.headers, "x-conveyor-original-routing-key", type);
        amqp::set_header(properties.headers, "x-conveyor-failed-at", failed_at);
        broker_.publish(std::move(message));
    }

    std::int64_t dead_count(const std::string& where = "true") {
        return database_.scalar("SELECT count(*) FROM conveyor.dead_letters WHERE state = 'dead' AND " + where);
    }

    static std::vector<std::string> lines(const std::string& text) {
        std::vector<std::string> result;
        std::istringstream stream(text);
        std::string line;
        while (std::getline(stream, line)) {
            if (!line.empty()) {
                result.push_back(line);
            }
        }
        return result;
    }

    std::string run_;
};

TEST_F(DlqTest, PaymentsDeadLetteredDuringAGatewayOutageCancelTheirOrdersAndTheirReplayChargesNothing) {
    constexpr int kOrders = 500;
    PaymentGatewayServer gateway;
    SmtpSink mail;
    reset_shop();
    database_.query("INSERT INTO shop.products (id, name, price_cents) VALUES ('sku-1', 'sku-1', 1250)");
    database_.query("INSERT INTO inventory.stock (product_id, available) VALUES ('sku-1', 1000)");
    gateway.control(R"({"refuse": true})");
    // A circuit that opens only after the last of the 1,000 failures: each charge uses up its two attempts. The
    // refunds that look for charges nobody heard of come the gateway timeout + 5 s after each cancellation: with a
    // 30 s timeout (refused connections fail at once whatever it is), after the charges have given up, so their
    // failures cannot open the circuit first; they keep their patient default policy and outlast the outage.
    auto worker =
        start_worker({"--queues", "orders,inventory,payments,emails,projections", "--payment-gateway-url",
                      gateway.url(), "--smtp-url", mail.url(), "--retry", "payments.charge=attempts:2,base:1s,cap:1s",
                      "--payment-circuit-failures", "1000", "--payment-gateway-timeout", "30s"},
                     "dlq-saga-worker");
    auto scheduler = start_scheduler({}, "dlq-saga-scheduler");
    std::vector<amqp::Message> orders;
    orders.reserve(kOrders);
    for (int i = 0; i < kOrders; ++i) {
        orders.push_back(Broker::job(
            "orders.place",
            fmt::format(
                R"({{"order_id":"o-{}","customer":{{"id":"c{}","email":"c{}@example.com","name":"C {}"}},"items":[{{"product_id":"sku-1","quantity":1}}],"currency":"EUR"}})",
                i, i, i, i)));
    }
    broker_.publish_all(std::move(orders));
    ASSERT_TRUE(eventually([&] { return dead_count("type = 'payments.charge'") == kOrders; }, 120s))
        << dead_count() << " stored\n"
        << worker.process->log();
    EXPECT_EQ(dead_count(), kOrders) << "only the payments failed";
    EXPECT_EQ(dead_count("reason = 'attempts_exhausted' AND attempts = 2"), kOrders);
    EXPECT_EQ(gateway.stat("/charges"), 0);
    EXPECT_EQ(broker_.ready("conveyor.payments.dlq"), 0U) << "archived and acknowledged";
    // Each charge that gave up set off its compensation: the order is cancelled and its stock is back.
    ASSERT_TRUE(eventually(
        [&] { return database_.scalar("SELECT count(*) FROM shop.orders WHERE status = 'cancelled'") == kOrders; },
        60s))
        << worker.process->log();
    ASSERT_TRUE(eventually(
        [&] { return database_.scalar("SELECT available FROM inventory.stock WHERE product_id = 'sku-1'") == 1000; },
        30s))
        << "every reservation released";
    ASSERT_TRUE(eventually(
        [&] {
            return scheduler.metric("conveyor_dead_letters_stored",
                                    {"family=\"payments\"", "reason=\"attempts_exhausted\""}) == kOrders;
        },
        15s));
    EXPECT_GT(scheduler.metric("conveyor_dead_letter_oldest_age_seconds", {"family=\"payments\""}), 0);

    const auto groups = dlq({"groups"});
    EXPECT_EQ(groups.status, 0) << groups.output;
    EXPECT_NE(groups.output.find(fmt::format("{:>8}", kOrders)), std::string::npos)
        << "the 500 failures are one group\n"
        << groups.output;

    gateway.control(R"({"refuse": false})");
    const auto replay = dlq({"replay", "--type", "payments.charge", "--canary", "5", "--no-progress"});
    ASSERT_EQ(replay.status, 0) << replay.output;
    EXPECT_NE(replay.output.find("all 5 canaries succeeded"), std::string::npos) << replay.output;
    EXPECT_NE(replay.output.find(fmt::format("replayed {} of {} dead letters", kOrders, kOrders)), std::string::npos)
        << replay.output;
    // The saga's state decides: a replayed charge of a cancelled order runs once and charges nothing.
    ASSERT_TRUE(eventually(
        [&] {
            return worker.metric("conveyor_jobs_completed_total",
                                 {"type=\"payments.charge\"", "outcome=\"success\""}) == kOrders;
        },
        120s))
        << worker.process->log();
    EXPECT_EQ(gateway.stat("/charges"), 0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.orders WHERE status = 'cancelled'"), kOrders);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.payments"), 0);
    EXPECT_EQ(dead_count(), 0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.dead_letters WHERE state = 'replayed' AND "
                               "replayed_by IS NOT NULL AND replayed_as = 'payments.charge'"),
              kOrders);
    EXPECT_EQ(broker_.ready("conveyor.payments.dlq"), 0U);
    ASSERT_TRUE(eventually(
        [&] { return scheduler.metric("conveyor_dlq_replayed_total", {"queue=\"conveyor.payments.dlq\""}) == kOrders; },
        15s))
        << http_get(scheduler.port, "/metrics")->second;
    EXPECT_TRUE(eventually(
        [&] {
            return scheduler.metric("conveyor_dead_letters_stored", {"family=\"payments\""}) == 0 &&
                   scheduler.metric("conveyor_dead_letter_oldest_age_seconds", {"family=\"payments\""}) == 0;
        },
        15s));
    stop(scheduler);
}

TEST_F(DlqTest, FiltersGroupsAndDryRunsSelectExactlyTheirDeadLetters) {
    auto scheduler = start_scheduler({}, "dlq-filters-scheduler");
    for (int i = 0; i < 30; ++i) {
        dead_letter(
            "payments.charge", fmt::format("{}-pay-{}", run_, i), "attempts_exhausted",
            fmt::format("gateway timeout after {} ms charging order 'ord-{}' (request 5f0c{:04x}-9b1e-4d2a-8c3f-"
                        "1a2b3c4d5e6f)",
                        30000 + i, i, i),
            "2026-11-22T08:00:00Z", fmt::format(R"({{"order_id":"ord-{}","amount_cents":1250}})", i));
    }
    for (int i = 0; i < 20; ++i) {
        dead_letter("emails.send", fmt::format("{}-mail-{}", run_, i), "permanent_failure",
                    fmt::format("550 5.1.1 <user{}@example.com>: mailbox unavailable", i), "2026-11-22T09:00:00Z");
    }
    for (int i = 0; i < 10; ++i) {
        dead_letter("orders.place", fmt::format("{}-order-{}", run_, i), "invalid_payload", "missing field 'items'",
                    "2026-01-01T00:00:00Z");
    }
    ASSERT_TRUE(eventually([&] { return dead_count() == 60; }, 30s)) << scheduler.process->log();

    const auto payments = dlq({"list", "--type", "payments.charge", "--json"});
    ASSERT_EQ(payments.status, 0) << payments.output;
    const auto rows = lines(payments.output);
    ASSERT_EQ(rows.size(), 30U) << payments.output;
    for (const auto& field :
         {R"("id":)", R"("job_id":)", R"("type":"payments.charge")", R"("family":"payments")",
          R"("reason":"attempts_exhausted")", R"("attempts":5)", R"("failed_at":)", R"("error":)"}) {
        EXPECT_NE(rows[0].find(field), std::string::npos) << field << " in " << rows[0];
    }
    const std::vector<std::pair<std::vector<std::string>, std::size_t>> selections = {
        {{"--family", "emails"}, 20},
        {{"--reason", "invalid_payload"}, 10},
        {{"--error", "MAILBOX unavailable"}, 20},
        {{"--job-id", run_ + "-pay-7"}, 1},
        {{"--until", "2026-06-01T00:00:00Z"}, 10},
        {{"--since", "2026-11-22T08:30:00Z"}, 20},
        {{"--since", "2026-11-22T07:00:00Z", "--until", "2026-11-22T08:30:00Z"}, 30},
        {{"--family", "payments", "--reason", "permanent_failure"}, 0},
        {{"--state", "replayed"}, 0},
    };
    for (const auto& [filter, expected] : selections) {
        auto args = filter;
        args.insert(args.begin(), "list");
        args.emplace_back("--json");
        const auto listed = dlq(args);
        EXPECT_EQ(listed.status, 0) << listed.output;
        EXPECT_EQ(lines(listed.output).size(), expected) << fmt::format("{}", fmt::join(filter, " "));
    }

    // Different order ids, amounts and request ids, one group; the mails another; the orders a third.
    const auto groups = database_.query(
        "SELECT fingerprint, count(*) FROM conveyor.dead_letters GROUP BY fingerprint ORDER BY count(*) DESC");
    ASSERT_EQ(groups.size(), 3U);
    EXPECT_EQ(groups[0][1], "30");
    EXPECT_EQ(groups[1][1], "20");
    EXPECT_EQ(groups[2][1], "10");
    const auto grouped = dlq({"groups"});
    ASSERT_EQ(grouped.status, 0) << grouped.output;
    EXPECT_NE(grouped.output.find(groups[0][0]), std::string::npos) << grouped.output;
    EXPECT_NE(grouped.output.find("gateway timeout after <n> ms charging order <str> (request <id>)"),
              std::string::npos)
        << grouped.output;
    const auto by_fingerprint = dlq({"list", "--fingerprint", groups[0][0], "--json"});
    EXPECT_EQ(lines(by_fingerprint.output).size(), 30U) << by_fingerprint.output;

    const auto stats = dlq({"stats"});
    ASSERT_EQ(stats.status, 0) << stats.output;
    for (const auto& expected : {"payments.charge", "attempts_exhausted", "emails.send", "invalid_payload"}) {
        EXPECT_NE(stats.output.find(expected), std::string::npos) << stats.output;
    }

    const auto id = database_.query("SELECT id FROM conveyor.dead_letters WHERE job_id = $1", {run_ + "-pay-3"});
    const auto shown = dlq({"show", id[0][0]});
    ASSERT_EQ(shown.status, 0) << shown.output;
    EXPECT_NE(shown.output.find("\"order_id\": \"ord-3\""), std::string::npos) << "payload pretty-printed\n"
                                                                               << shown.output;
    EXPECT_NE(shown.output.find("corr-" + run_ + "-pay-3"), std::string::npos) << shown.output;

    const auto dry = dlq({"replay", "--family", "emails", "--dry-run"});
    ASSERT_EQ(dry.status, 0) << dry.output;
    EXPECT_NE(dry.output.find("would replay 20 dead letters"), std::string::npos) << dry.output;
    EXPECT_EQ(dead_count(), 60) << "a dry run changes nothing";
    EXPECT_EQ(broker_.ready("conveyor.emails"), 0U);

    // Replaying one group re-routed to a fixed version: only those 30, as the new type.
    const auto rerouted = dlq({"replay", "--fingerprint", groups[0][0], "--to", "diag.noop", "--no-progress"});
    ASSERT_EQ(rerouted.status, 0) << rerouted.output;
    EXPECT_EQ(dead_count(), 30);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.dead_letters WHERE replayed_as = 'diag.noop'"), 30);
    const auto arrived = broker_.take("conveyor.diag", 30, 10s);
    ASSERT_EQ(arrived.size(), 30U);
    EXPECT_EQ(arrived[0].message.routing_key, "diag.noop");
    stop(scheduler);
}

TEST_F(DlqTest, AReplayedJobStartsAfreshAndRecordsItsReplay) {
    insert_dead_letters("fresh", 200, "diag.noop");
    const auto started = std::chrono::steady_clock::now();
    const auto replay = dlq({"replay", "--type", "diag.noop", "--rate", "100", "--no-progress"});
    const auto took = std::chrono::steady_clock::now() - started;
    ASSERT_EQ(replay.status, 0) << replay.output;
    // The first goes at once, the 200th 1.99 s later.
    EXPECT_GE(took, 1990ms) << "--rate 100 replayed 200 in "
                            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
    const auto messages = broker_.take("conveyor.diag", 200, 10s);
    ASSERT_EQ(messages.size(), 200U);
    std::set<std::string> ids;
    for (const auto& delivery : messages) {
        ids.insert(delivery.message.properties.message_id);
        EXPECT_TRUE(header_text(delivery, "x-conveyor-attempts").empty())
            << "a replay starts with a fresh attempt count";
        EXPECT_TRUE(header_text(delivery, "x-conveyor-reason").empty());
        EXPECT_TRUE(header_text(delivery, "x-conveyor-error").empty());
        EXPECT_TRUE(header_text(delivery, "x-first-death-reason").empty()) << "the broker's failure history";
        EXPECT_EQ(header_text(delivery, "traceparent"), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        EXPECT_FALSE(header_text(delivery, "x-conveyor-replayed-at").empty());
        EXPECT_FALSE(header_text(delivery, "x-conveyor-replayed-by").empty());
        EXPECT_FALSE(header_text(delivery, "x-conveyor-replayed-from").empty());
    }
    EXPECT_EQ(ids.size(), 200U);
    EXPECT_TRUE(ids.contains(run_ + "-fresh-1")) << "the original job id";
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.dead_letters WHERE state = 'replayed'"), 200);
    EXPECT_EQ(database_.scalar("SELECT replayed FROM conveyor.dead_letter_replays WHERE queue = 'conveyor.diag.dlq'"),
              200);
    const auto again = dlq({"replay", "--type", "diag.noop"});
    EXPECT_EQ(again.status, 0) << again.output;
    EXPECT_NE(again.output.find("replayed 0 of 0"), std::string::npos) << "replayed ones are not replayed twice\n"
                                                                       << again.output;
}

TEST_F(DlqTest, CanariesThatFailAgainStopTheReplay) {
    auto worker = start_worker({}, "dlq-canary-worker");
    auto scheduler = start_scheduler({}, "dlq-canary-scheduler");
    constexpr int kJobs = 50;
    for (int i = 0; i < kJobs; ++i) {
        broker_.publish(
            Broker::job("diag.fail", R"({"times": 1, "permanent": true})", fmt::format("{}-canary-{}", run_, i)));
    }
    ASSERT_TRUE(eventually([&] { return dead_count() == kJobs; }, 30s)) << scheduler.process->log();
    // The bug is not fixed: the canaries fail again and the replay stops, its verdict counting every canary (the
    // first failure does not cut the others short).
    const auto replay = dlq({"replay", "--type", "diag.fail", "--canary", "5", "--canary-timeout", "30s"});
    EXPECT_EQ(replay.status, 1) << replay.output;
    EXPECT_NE(replay.output.find("5 of 5 canaries failed again (diag.fail: failing attempt 1 of 1)"), std::string::npos)
        << replay.output;
    EXPECT_NE(replay.output.find("the rest are still dead letters"), std::string::npos) << replay.output;
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.dead_letters WHERE state = 'replayed'"), 5);
    ASSERT_TRUE(eventually([&] { return dead_count() == kJobs; }, 15s)) << "45 untouched and the 5 canaries' new ones";
    EXPECT_EQ(dead_count("job_id IN (SELECT job_id FROM conveyor.dead_letters WHERE state = 'replayed')"), 5)
        << "each canary is a dead letter again, with its new failure";
    stop(scheduler);
}

TEST_F(DlqTest, AReplayKilledMidwayAndRunAgainRunsEveryJobExactlyOnce) {
    constexpr int kJobs = 2000;
    insert_dead_letters("kill", kJobs, "diag.ledger");
    auto worker = start_worker({}, "dlq-kill-worker");
    const auto log = std::filesystem::temp_directory_path() / "conveyor-dlq-kill-replay.log";
    {
        Process replay(binary_dir() / "conveyor",
                       {"--amqp-url", amqp_url(), "dlq", "--pg-url", pg_url(), "replay", "--type", "diag.ledger",
                        "--rate", "500", "--no-progress"},
                       log);
        ASSERT_TRUE(eventually(
            [&] {
                return database_.scalar("SELECT count(*) FROM conveyor.dead_letters WHERE state = 'replayed'") >= 600;
            },
            30s))
            << replay.log();
        replay.signal(SIGKILL);
        EXPECT_EQ(replay.wait(10s), std::optional<int>(128 + SIGKILL));
    }
    const auto first = database_.scalar("SELECT count(*) FROM conveyor.dead_letters WHERE state = 'replayed'");
    EXPECT_LT(first, kJobs) << "the kill came too late to test anything";
    EXPECT_EQ(first + dead_count(), kJobs) << "every dead letter is either replayed or still replayable";
    // The audit entry gains each chunk's job ids in the chunk's transaction: after the kill it names exactly the
    // jobs marked replayed, none that the kill left replayable.
    const std::string audited_jobs =
        "SELECT DISTINCT unnest(job_ids) FROM conveyor.audit_log WHERE action = 'replay' AND job_ids && "
        "ARRAY(SELECT job_id FROM conveyor.dead_letters WHERE job_id LIKE $1)";
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM (" + audited_jobs + ") a", {run_ + "-kill-%"}), first);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM (" + audited_jobs +
                                   ") a(job_id) JOIN conveyor.dead_letters d USING (job_id) WHERE d.state = 'dead'",
                               {run_ + "-kill-%"}),
              0);

    const auto second = dlq({"replay", "--type", "diag.ledger", "--no-progress"});
    ASSERT_EQ(second.status, 0) << second.output;
    EXPECT_EQ(dead_count(), 0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM (" + audited_jobs + ") a", {run_ + "-kill-%"}), kJobs);
    EXPECT_EQ(database_.scalar("SELECT (details->>'replayed')::bigint FROM conveyor.audit_log WHERE action = 'replay' "
                               "ORDER BY id DESC LIMIT 1"),
              kJobs - first)
        << "the finished replay records how many it replayed";
    const auto applied = [&] {
        return database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE job_id LIKE $1", {run_ + "-kill-%"});
    };
    ASSERT_TRUE(eventually([&] { return applied() == kJobs; }, 60s)) << applied() << '\n' << worker.process->log();
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE job_id LIKE $1 AND applied <> 1",
                               {run_ + "-kill-%"}),
              0)
        << "a job ran twice";
    // What the killed replay published but never marked is at most its chunk in flight, published again by the
    // second: the inbox absorbs those.
    std::this_thread::sleep_for(1s);
    EXPECT_LE(worker.metric("conveyor_jobs_completed_total", {"outcome=\"duplicate\""}), 100);
}

TEST_F(DlqTest, AJobTheBrokerDeadLetteredKeepsItsTypeAndIsReplayedAsIt) {
    auto scheduler = start_scheduler({}, "dlq-broker-death-scheduler");
    // No worker: the broker expires the job in its queue and dead-letters it itself, with only x-death to say
    // where it was published.
    auto job = Broker::job("diag.noop", R"({"n": 7})", run_ + "-expired");
    job.properties.expiration = "1";
    broker_.publish(std::move(job));
    ASSERT_TRUE(eventually([&] { return dead_count() == 1; }, 30s)) << scheduler.process->log();
    const auto stored = database_.query("SELECT job_id, type, routing_key, reason FROM conveyor.dead_letters");
    EXPECT_EQ(stored[0][0], run_ + "-expired");
    EXPECT_EQ(stored[0][1], "diag.noop");
    EXPECT_EQ(stored[0][2], "diag.noop");
    EXPECT_EQ(stored[0][3], "expired");

    const auto replay = dlq({"replay", "--type", "diag.noop"});
    ASSERT_EQ(replay.status, 0) << replay.output;
    const auto arrived = broker_.take("conveyor.diag", 1, 10s);
    ASSERT_EQ(arrived.size(), 1U);
    EXPECT_EQ(arrived[0].message.properties.message_id, run_ + "-expired");
    EXPECT_EQ(arrived[0].message.body, R"({"n": 7})");
    EXPECT_TRUE(arrived[0].message.properties.expiration.empty()) << "a replay must not expire again";
    stop(scheduler);
}

TEST_F(DlqTest, MalformedFailureHeadersAreStoredWithoutStoppingTheArchiver) {
    const std::vector<std::pair<std::string, std::string>> headers = {
        {"many", "yesterday"}, {"99999999999999", "2026-02-30T10:00:00Z"}, {"-1", "2026-11-22T25:00:00Z"}};
    for (std::size_t i = 0; i < headers.size(); ++i) {
        amqp::Message message;
        message.routing_key = "conveyor.diag.dlq";
        message.body = "{}";
        message.properties.message_id = fmt::format("{}-malformed-{}", run_, i);
        amqp::set_header(message.properties.headers, "x-conveyor-reason", std::string("permanent_failure"));
        amqp::set_header(message.properties.headers, "x-conveyor-original-routing-key", std::string("diag.noop"));
        amqp::set_header(message.properties.headers, "x-conveyor-attempts", headers[i].first);
        amqp::set_header(message.properties.headers, "x-conveyor-failed-at", headers[i].second);
        broker_.publish(std::move(message));
    }
    dead_letter("diag.noop", run_ + "-wellformed", "permanent_failure", "boom", "2026-11-22T08:00:00Z");
    auto scheduler = start_scheduler({}, "dlq-malformed-scheduler");
    ASSERT_TRUE(eventually([&] { return dead_count() == 4; }, 30s)) << scheduler.process->log();
    EXPECT_EQ(dead_count("attempts = 0 AND failed_at > now() - interval '5 minutes'"), 3)
        << "unreadable values become 0 attempts, failed now";
    EXPECT_EQ(dead_count("attempts = 5 AND failed_at = '2026-11-22T08:00:00Z'"), 1);
    EXPECT_EQ(broker_.ready("conveyor.diag.dlq"), 0U);
    stop(scheduler);
}

TEST_F(DlqTest, BadFiltersAndFlagsAreRefusedWithTheReason) {
    insert_dead_letters("bad", 3, "diag.noop");
    const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
        {{"list", "--family", "invoices"}, "unknown family 'invoices'"},
        {{"list", "--state", "buried"}, "state must be dead, replayed or all"},
        {{"list", "--fingerprint", "xyz"}, "fingerprint 'xyz' is not 16 hexadecimal digits"},
        {{"list", "--since", "last tuesday"}, "last tuesday"},
        {{"replay", "--to", "not a type"}, "--to 'not a type' is not a job type"},
        {{"replay", "--rate", "-3"}, "--rate"},
        {{"show", "abc"}, "id"},
        {{"list", "--limit", "0"}, "--limit"},
    };
    for (const auto& [args, expected] : cases) {
        const auto run = dlq(args);
        EXPECT_EQ(run.status, 2) << fmt::format("{}", fmt::join(args, " ")) << '\n' << run.output;
        EXPECT_NE(run.output.find(expected), std::string::npos) << run.output;
    }
    EXPECT_EQ(dead_count(), 3) << "nothing changed";
    const auto missing = dlq({"show", "999999999"});
    EXPECT_EQ(missing.status, 1) << missing.output;
    EXPECT_NE(missing.output.find("no dead letter 999999999"), std::string::npos) << missing.output;
}

TEST_F(DlqTest, PurgeNeedsYesAndReportsWhatItDeleted) {
    insert_dead_letters("purge-noop", 7, "diag.noop");
    insert_dead_letters("purge-ledger", 4, "diag.ledger");
    const auto unconfirmed = dlq({"purge", "--type", "diag.noop"});
    EXPECT_EQ(unconfirmed.status, 2) << unconfirmed.output;
    EXPECT_NE(unconfirmed.output.find("would delete 7"), std::string::npos) << unconfirmed.output;
    EXPECT_EQ(dead_count(), 11);
    const auto purged = dlq({"purge", "--type", "diag.noop", "--yes"});
    ASSERT_EQ(purged.status, 0) << purged.output;
    EXPECT_NE(purged.output.find("deleted 7"), std::string::npos) << purged.output;
    EXPECT_EQ(dead_count(), 4);
    EXPECT_EQ(dead_count("type = 'diag.ledger'"), 4);
}

/// The admin API's dead-letter endpoints, with the real curl.
class DlqApiTest : public DlqTest {
  protected:
    void SetUp() override {
        DlqTest::SetUp();
        const auto tokens = write_file("dlq-api-tokens", fmt::format(R"(tokens:
  - name: orders-service
    sha256: {}
    scopes: [enqueue]
  - name: ops
    sha256: {}
    scopes: [admin]
)",
                                                                     sha256("enqueue-secret"), sha256("admin-secret")));
        scheduler_ = start_scheduler({"--api-tokens-file", tokens.string()}, "dlq-api-scheduler");
    }

    void TearDown() override { stop(scheduler_); }

    [[nodiscard]] ApiResponse call(const std::string& method, const std::string& path,
                                   const std::string& token = "admin-secret", const std::string& body = {}) const {
        return call_api(scheduler_.port, method, path, token, body);
    }

    SchedulerUnderTest scheduler_;
};

TEST_F(DlqApiTest, AdminEndpointsListShowReplayAndPurgeWithTheAdminScopeOnly) {
    insert_dead_letters("api-noop", 12, "diag.noop", R"({"n": 1})");
    insert_dead_letters("api-ledger", 5, "diag.ledger");

    for (const auto& [method, path] :
         std::vector<std::pair<std::string, std::string>>{{"GET", "/v1/dead-letters"},
                                                          {"GET", "/v1/dead-letters/1"},
                                                          {"POST", "/v1/dead-letters/replay"},
                                                          {"POST", "/v1/dead-letters/purge"}}) {
        EXPECT_EQ(call(method, path, "enqueue-secret", "{\"filter\": {}}").status, 403) << method << ' ' << path;
        EXPECT_EQ(call(method, path, "", "{\"filter\": {}}").status, 401) << method << ' ' << path;
    }
    EXPECT_EQ(dead_count(), 17) << "refused requests change nothing";

    const auto listed = call("GET", "/v1/dead-letters?type=diag.noop&limit=5");
    ASSERT_EQ(listed.status, 200) << listed.body;
    simdjson::dom::parser parser;
    simdjson::dom::array letters;
    ASSERT_EQ(parser.parse(listed.body)["dead_letters"].get(letters), simdjson::SUCCESS) << listed.body;
    EXPECT_EQ(letters.size(), 5U);
    std::int64_t first_id = 0;
    ASSERT_EQ(letters.at(0)["id"].get(first_id), simdjson::SUCCESS);
    EXPECT_EQ(call("GET", "/v1/dead-letters?family=nope").status, 400);
    EXPECT_EQ(call("GET", "/v1/dead-letters?limit=0").status, 400);
    EXPECT_EQ(call("GET", "/v1/dead-letters?since=last%20week").status, 400);
    EXPECT_EQ(call("GET", "/v1/dead-letters?type=").status, 400) << "an empty filter would silently match nothing";

    const auto shown = call("GET", fmt::format("/v1/dead-letters/{}", first_id));
    ASSERT_EQ(shown.status, 200) << shown.body;
    EXPECT_NE(shown.body.find(R"("payload":{"n":1})"), std::string::npos) << shown.body;
    EXPECT_NE(shown.body.find(R"("x-conveyor-attempts":3)"), std::string::npos) << shown.body;
    EXPECT_EQ(call("GET", "/v1/dead-letters/999999999").status, 404);
    EXPECT_EQ(call("GET", "/v1/dead-letters/abc").status, 400);

    const auto dry = call("POST", "/v1/dead-letters/replay", "admin-secret",
                          R"({"filter": {"type": "diag.noop"}, "dry_run": true})");
    ASSERT_EQ(dry.status, 200) << dry.body;
    EXPECT_NE(dry.body.find(R"("matched":12)"), std::string::npos) << dry.body;
    EXPECT_EQ(dead_count(), 17);
    EXPECT_EQ(call("POST", "/v1/dead-letters/replay", "admin-secret", R"({"limit": 3})").status, 400)
        << "a filter must be given, even an empty one";
    EXPECT_EQ(call("POST", "/v1/dead-letters/replay", "admin-secret", R"({"filter": {"colour": "red"}})").status, 400);
    EXPECT_EQ(call("POST", "/v1/dead-letters/replay", "admin-secret", R"({"filter": {}, "rate": 0.01})").status, 400)
        << "17 at 0.01/s would outlast the request";

    const auto replayed = call("POST", "/v1/dead-letters/replay", "admin-secret",
                               R"({"filter": {"type": "diag.noop"}, "limit": 3, "rate": 50})");
    ASSERT_EQ(replayed.status, 200) << replayed.body;
    EXPECT_NE(replayed.body.find(R"("replayed":3)"), std::string::npos) << replayed.body;
    EXPECT_EQ(dead_count("type = 'diag.noop'"), 9);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.dead_letters WHERE replayed_by = 'api:ops'"), 3);
    EXPECT_EQ(broker_.take("conveyor.diag", 3, 10s).size(), 3U);

    EXPECT_EQ(call("POST", "/v1/dead-letters/purge", "admin-secret", "{}").status, 400);
    const auto purged =
        call("POST", "/v1/dead-letters/purge", "admin-secret", R"({"filter": {"type": "diag.ledger"}})");
    ASSERT_EQ(purged.status, 200) << purged.body;
    EXPECT_NE(purged.body.find(R"("deleted":5)"), std::string::npos) << purged.body;
    EXPECT_EQ(dead_count(), 9);
    EXPECT_GE(scheduler_.metric("conveyor_api_requests_total", {"route=\"/v1/dead-letters/replay\"", "status=\"200\""}),
              2);
}

}  // namespace
}  // namespace conveyor::testing
