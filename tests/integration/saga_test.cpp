#include <fmt/ranges.h>

#include <algorithm>
#include <csignal>
#include <iterator>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "conveyor/core/pg.hpp"
#include "local_servers.hpp"
#include "orders.hpp"
#include "worker_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

const std::vector<std::string> kSagaFamilies{"orders", "inventory", "payments", "emails", "projections"};

/// Whether the spans form one tree: each one's parent is a span among them, or the caller's span.
bool connected(const std::vector<ReceivedSpan>& spans, const std::string& caller_span) {
    std::set<std::string> ids;
    for (const auto& span : spans) {
        ids.insert(span.span_id);
    }
    return std::all_of(spans.begin(), spans.end(), [&](const ReceivedSpan& span) {
        return span.parent_span_id == caller_span || ids.contains(span.parent_span_id);
    });
}

/// The emails each order's story implies, as "order:template": a captured payment sends the receipt, a rejection
/// out_of_stock, a cancellation payment_failed (declined) or order_cancelled, a refund order_refunded.
std::set<std::string> emails_implied_by_stories(Database& database) {
    const auto stories = database.query(
        "SELECT aggregate_id, ',' || string_agg(type, ',' ORDER BY version) || ',' FROM shop.events "
        "GROUP BY aggregate_id");
    std::set<std::string> implied;
    for (const auto& row : stories) {
        const auto& order = row[0];
        const auto& story = row[1];
        const auto has = [&](std::string_view event) {
            return story.find(fmt::format(",{},", event)) != std::string::npos;
        };
        if (has("PaymentCaptured")) {
            implied.insert(order + ":order_confirmed");
        }
        if (has("OrderRejected")) {
            implied.insert(order + ":out_of_stock");
        }
        if (has("OrderCancelled")) {
            implied.insert(order + (has("PaymentDeclined") ? ":payment_failed" : ":order_cancelled"));
        }
        if (has("PaymentRefunded")) {
            implied.insert(order + ":order_refunded");
        }
    }
    return implied;
}

/// What the mail server received, as "order:template" (the order from the subject), and how many deliveries
/// repeated one: a crash between the server's acceptance and the job's commit sends an email again, under the same
/// Message-ID, which must then be the only difference.
std::set<std::string> emails_received(const std::vector<CapturedMail>& mails, int& repeated, int& foreign_ids) {
    std::set<std::string> received;
    std::map<std::string, std::string> message_ids;
    repeated = 0;
    foreign_ids = 0;
    for (const auto& mail : mails) {
        std::istringstream subject(mail.subject);
        std::string word;
        std::string order;
        while (subject >> word) {
            if (word == "order" || word == "Order") {
                subject >> order;
                break;
            }
        }
        const auto key = order + ":" + mail.template_name;
        if (!received.insert(key).second) {
            ++repeated;
            foreign_ids += message_ids[key] == mail.message_id ? 0 : 1;
        }
        message_ids.emplace(key, mail.message_id);
    }
    return received;
}

/// The order saga against the real broker, the real database, a local payment gateway and a local mail server.
class SagaTest : public WorkerTest {
  protected:
    void SetUp() override {
        WorkerTest::SetUp();
        run_cli({"topology", "declare"});
        for (const auto& family : kSagaFamilies) {
            broker_.purge(topology::queue_name(family));
            broker_.purge(topology::dead_letter_queue_name(family));
        }
        // Retries an earlier test left waiting in the delay ladder would come back into this one.
        for (unsigned level = 0; level < topology::kDelayLevels; ++level) {
            broker_.purge(topology::delay_level_name(level));
        }
        reset_shop();
    }

    void add_product(const std::string& id, std::int64_t price_cents, std::int64_t stock) {
        database_.query("INSERT INTO shop.products (id, name, price_cents) VALUES ($1, $1, $2)",
                        {id, std::to_string(price_cents)});
        database_.query("INSERT INTO inventory.stock (product_id, available) VALUES ($1, $2)",
                        {id, std::to_string(stock)});
    }

    WorkerUnderTest start_saga_worker(const PaymentGatewayServer& gateway, const SmtpSink& mail,
                                      std::vector<std::string> args, const std::string& log_name) {
        args.insert(args.end(), {"--queues", "orders,inventory,payments,emails,projections", "--payment-gateway-url",
                                 gateway.url(), "--smtp-url", mail.url()});
        return start_worker(std::move(args), log_name);
    }

    void place(const std::string& order_id, const std::string& customer, const std::vector<Line>& lines,
               const std::string& currency = "EUR") {
        broker_.publish(Broker::job("orders.place", order_payload(order_id, customer, lines, currency)));
    }

    std::string status_of(const std::string& order_id) {
        const auto rows = database_.query("SELECT status FROM shop.orders WHERE id = $1", {order_id});
        return rows.empty() ? std::string("(none)") : rows[0][0];
    }

    bool has_status(const std::string& order_id, const std::string& status) { return status_of(order_id) == status; }

    /// Every order in a final state, every read model caught up with every order's events, and inventory done with
    /// every order: holding the stock of a confirmed one, nothing for the others (released, or short: an order
    /// cancelled while inventory found its stock short).
    bool settled(std::int64_t orders) {
        return database_.scalar(
                   "SELECT count(*) FROM shop.orders WHERE status IN ('confirmed', 'cancelled', "
                   "'rejected', 'refunded')") == orders &&
               database_.scalar(
                   "SELECT count(*) FROM shop.orders o JOIN shop.projection_checkpoints c "
                   "ON c.aggregate_id = o.id AND c.version = o.version") == 3 * orders &&
               database_.scalar(
                   "SELECT count(*) FROM shop.orders o JOIN inventory.reservations r ON r.order_id = o.id "
                   "WHERE (o.status = 'confirmed' AND r.status = 'reserved') "
                   "   OR (o.status = 'rejected' AND r.status = 'short') "
                   "   OR (o.status IN ('cancelled', 'refunded') AND r.status IN ('released', 'short'))") == orders;
    }

    std::int64_t stock_of(const std::string& product) {
        return database_.scalar("SELECT available FROM inventory.stock WHERE product_id = $1", {product});
    }

    /// Whether the worker runs nothing and the saga's queues hold nothing, twice a second apart, within a minute.
    bool idle(const WorkerUnderTest& worker) {
        int quiet = 0;
        return eventually(
            [&] {
                std::size_t ready = 0;
                for (const auto& family : kSagaFamilies) {
                    ready += broker_.ready(topology::queue_name(family));
                }
                quiet = ready == 0 && worker.metric("conveyor_jobs_in_flight") == 0 ? quiet + 1 : 0;
                std::this_thread::sleep_for(500ms);
                return quiet >= 2;
            },
            60s);
    }

    /// Stock is what it was less what confirmed orders hold; every charge made is on record and every refund too,
    /// each order refunded at most once at the gateway, and no money kept for an order that did not end confirmed.
    void check_books_balance(const PaymentGatewayServer& gateway, const std::map<std::string, std::int64_t>& initial) {
        std::map<std::string, std::int64_t> held;
        for (const auto& row : database_.query(
                 "SELECT i.product_id, sum(i.quantity) FROM shop.order_items i JOIN shop.orders o ON o.id = i.order_id "
                 "WHERE o.status = 'confirmed' GROUP BY i.product_id")) {
            held[row[0]] = std::stoll(row[1]);
        }
        for (const auto& [product, stock] : initial) {
            EXPECT_EQ(stock_of(product), stock - held[product]) << product;
        }
        const auto refunded = database_.query("SELECT order_id FROM shop.payments WHERE status = 'refunded'");
        EXPECT_TRUE(
            eventually([&] { return gateway.stat("/refunds") == static_cast<std::int64_t>(refunded.size()); }, 30s))
            << gateway.stat("/refunds") << " refunds at the gateway, " << refunded.size() << " on record";
        for (const auto& row : refunded) {
            EXPECT_EQ(gateway.stat("/refunds_by_order/" + row[0]), 1) << row[0];
        }
        EXPECT_EQ(gateway.stat("/charges"),
                  database_.scalar("SELECT count(*) FROM shop.payments WHERE status IN ('captured', 'refunded')"));
        EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.payments p JOIN shop.orders o ON o.id = p.order_id "
                                   "WHERE p.status = 'captured' AND o.status <> 'confirmed'"),
                  0);
        std::cout << "orders by status: "
                  << database_.query(
                         "SELECT string_agg(status || ' ' || n, ', ' ORDER BY status) FROM (SELECT "
                         "status::text, count(*) AS n FROM shop.orders GROUP BY status) s")[0][0]
                  << "; " << refunded.size() << " refunded at the gateway, "
                  << database_.scalar("SELECT count(*) FROM shop.payments WHERE status = 'declined'") << " declined\n";
        for (const auto* status : {"confirmed", "rejected", "cancelled", "refunded"}) {
            EXPECT_GT(database_.scalar("SELECT count(*) FROM shop.orders WHERE status = $1", {status}), 0) << status;
        }
    }

    /// Every customer got exactly the emails their order's story implies (a repeated delivery only under the first
    /// one's Message-ID).
    void check_emails_match_stories(const SmtpSink& mail) {
        const auto implied = emails_implied_by_stories(database_);
        int repeated = 0;
        int foreign_ids = 0;
        std::set<std::string> received;
        const bool matched = eventually(
            [&] {
                received = emails_received(mail.mails(), repeated, foreign_ids);
                return received == implied;
            },
            90s);
        if (!matched) {
            std::vector<std::string> missing;
            std::vector<std::string> unexpected;
            std::set_difference(implied.begin(), implied.end(), received.begin(), received.end(),
                                std::back_inserter(missing));
            std::set_difference(received.begin(), received.end(), implied.begin(), implied.end(),
                                std::back_inserter(unexpected));
            missing.resize(std::min<std::size_t>(missing.size(), 20));
            unexpected.resize(std::min<std::size_t>(unexpected.size(), 20));
            ADD_FAILURE() << "missing: " << fmt::format("{}", fmt::join(missing, " "))
                          << "\nunexpected: " << fmt::format("{}", fmt::join(unexpected, " "));
        }
        EXPECT_EQ(foreign_ids, 0) << "an email repeated under a Message-ID of its own";
        std::cout << implied.size() << " emails, as the stories imply; " << repeated
                  << " delivered again after the kill, under the same Message-ID\n";
    }

    /// Each read model rebuilt from the event store alone equals what the incremental updates built, and agrees
    /// with the system of record.
    void check_rebuilds_equal_incremental_models(const WorkerUnderTest& worker,
                                                 const std::vector<std::string>& projections, std::int64_t orders) {
        const auto rebuilt = [&] {
            return worker.metric("conveyor_jobs_completed_total",
                                 {"type=\"projections.rebuild\"", "outcome=\"success\""});
        };
        ASSERT_TRUE(eventually([&] { return rebuilt() == 3; }, 60s));
        database_.query(
            "DROP TABLE IF EXISTS incremental_order_summary, incremental_customer_stats, incremental_daily_sales");
        for (const auto& projection : projections) {
            database_.query(fmt::format("CREATE TABLE incremental_{0} AS SELECT * FROM shop.{0}", projection));
            broker_.publish(Broker::job("projections.rebuild", fmt::format(R"({{"projection":"{}"}})", projection)));
        }
        ASSERT_TRUE(eventually([&] { return rebuilt() == 6; }, 120s)) << worker.process->log().substr(0, 20'000);
        for (const auto& projection : projections) {
            EXPECT_GT(database_.scalar(fmt::format("SELECT count(*) FROM shop.{}", projection)), 0) << projection;
            const auto differences = database_.scalar(fmt::format(
                "SELECT count(*) FROM ((SELECT * FROM shop.{0} EXCEPT ALL SELECT * FROM incremental_{0}) UNION ALL "
                "(SELECT * FROM incremental_{0} EXCEPT ALL SELECT * FROM shop.{0})) AS difference",
                projection));
            EXPECT_EQ(differences, 0) << projection << " differs from its rebuild in " << differences << " rows";
            database_.query(fmt::format("DROP TABLE incremental_{}", projection));
        }
        EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.order_summary s JOIN shop.orders o "
                                   "ON o.id = s.order_id AND o.status::text = s.status"),
                  orders);
        EXPECT_EQ(database_.scalar("SELECT coalesce(sum(revenue_cents), 0) FROM shop.daily_sales"),
                  database_.scalar("SELECT coalesce(sum(amount_cents), 0) FROM shop.payments WHERE status IN "
                                   "('captured', 'refunded')"));
        EXPECT_EQ(database_.scalar("SELECT coalesce(sum(refunded_cents), 0) FROM shop.daily_sales"),
                  database_.scalar("SELECT coalesce(sum(amount_cents), 0) FROM shop.payments WHERE status = "
                                   "'refunded'"));
    }

    /// The spans of one trace reached the receiver and form one tree under the caller's span, from the order's job
    /// through inventory to an email.
    static void check_one_connected_trace(const OtlpReceiver& receiver, const std::string& trace_id,
                                          const std::string& caller_span) {
        std::vector<ReceivedSpan> spans;
        const auto has = [&](const std::string& name) {
            return std::any_of(spans.begin(), spans.end(), [&](const ReceivedSpan& span) { return span.name == name; });
        };
        EXPECT_TRUE(eventually(
            [&] {
                spans = receiver.spans_of(trace_id);
                return has("orders.place") && has("inventory.reserve") && has("smtp send") &&
                       connected(spans, caller_span);
            },
            30s))
            << receiver.render(trace_id);
        EXPECT_EQ(std::count_if(spans.begin(), spans.end(),
                                [&](const ReceivedSpan& span) { return span.parent_span_id == caller_span; }),
                  1)
            << receiver.render(trace_id);
        std::cout << receiver.render(trace_id);
    }

    /// The reservation's events in inventory, by type in version order.
    std::string inventory_story_of(const std::string& order_id) {
        const auto rows = database_.query(
            "SELECT string_agg(type, ',' ORDER BY version) FROM inventory.events WHERE aggregate_id = $1", {order_id});
        return rows.empty() ? std::string() : rows[0][0];
    }

    /// Whether the product's stock comes to `expected` within 30 s: inventory releases a cancelled order's stock in
    /// a job of its own, after the order has changed.
    ::testing::AssertionResult stock_is(const std::string& product, std::int64_t expected) {
        if (eventually([&] { return stock_of(product) == expected; }, 30s)) {
            return ::testing::AssertionSuccess();
        }
        return ::testing::AssertionFailure() << product << ": " << stock_of(product) << " in stock, not " << expected;
    }

    /// The order's events, by type in version order: "OrderPlaced,StockReserved,…".
    std::string story_of(const std::string& order_id) {
        const auto rows = database_.query(
            "SELECT string_agg(type, ',' ORDER BY version) FROM shop.events WHERE aggregate_id = $1", {order_id});
        return rows.empty() ? std::string() : rows[0][0];
    }

    std::int64_t completed(const WorkerUnderTest& worker, const std::string& type, const std::string& outcome) {
        return worker.metric("conveyor_jobs_completed_total",
                             {fmt::format("type=\"{}\"", type), fmt::format("outcome=\"{}\"", outcome)});
    }

    void cancel_order(const std::string& order_id, const std::string& reason) {
        broker_.publish(
            Broker::job("orders.cancel", fmt::format(R"({{"order_id":"{}","reason":"{}"}})", order_id, reason)));
    }
};

/// Arguments that make the saga's waits short: a refund job looks for a charge nobody heard of 6 s after the
/// cancel (the gateway's timeout plus 5 s), and failed payment calls come back after a second.
const std::vector<std::string> kQuickPayments{"--payment-gateway-timeout", "1s", "--retry",
                                              "payments.*=attempts:5,base:1s,cap:1s"};

TEST_F(SagaTest, AnOrderIsReservedChargedOnceConfirmedMailedAndProjected) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 1250, 10);
    add_product("sku-2", 999, 5);
    auto worker = start_saga_worker(gateway, mail, {}, "saga-happy");
    place("order-1", "alice", {{"sku-1", 2}, {"sku-2", 1}});

    ASSERT_TRUE(eventually([&] { return has_status("order-1", "confirmed"); }, 30s)) << worker.process->log();
    ASSERT_TRUE(eventually([&] { return mail.count("order_confirmed") == 1; }, 30s)) << worker.process->log();
    ASSERT_TRUE(eventually([&] { return settled(1); }, 30s)) << worker.process->log();
    EXPECT_EQ(mail.mails().size(), 1U) << "one email per order, even once everything has settled";

    EXPECT_TRUE(stock_is("sku-1", 8));
    EXPECT_TRUE(stock_is("sku-2", 4));
    EXPECT_EQ(gateway.stat("/charges"), 1);
    EXPECT_EQ(gateway.stat("/charges_by_order/order-1"), 1);
    const auto payment = database_.query("SELECT status, amount_cents, idempotency_key FROM shop.payments");
    const Database::Rows expected_payment{{"captured", "3499", "conveyor-order-order-1"}};
    EXPECT_EQ(payment, expected_payment);
    const auto events = database_.query(
        "SELECT version, type FROM shop.events WHERE aggregate_id = 'order-1' "
        "ORDER BY version");
    const Database::Rows expected_events{
        {"1", "OrderPlaced"}, {"2", "StockReserved"}, {"3", "PaymentCaptured"}, {"4", "OrderConfirmed"}};
    EXPECT_EQ(events, expected_events);

    const auto receipt = mail.mails().at(0);
    EXPECT_EQ(receipt.to, "alice@example.com");
    EXPECT_EQ(receipt.subject, "Your order order-1 is confirmed");
    EXPECT_NE(receipt.body.find("34.99 EUR"), std::string::npos) << receipt.body;
    EXPECT_NE(receipt.body.find("Hello Customer alice"), std::string::npos) << receipt.body;

    const auto summary =
        database_.query("SELECT status, total_cents, item_count FROM shop.order_summary WHERE order_id = 'order-1'");
    const Database::Rows expected_summary{{"confirmed", "3499", "3"}};
    EXPECT_EQ(summary, expected_summary);
    const auto stats = database_.query(
        "SELECT order_count, lifetime_value_cents FROM shop.customer_stats "
        "WHERE customer_id = 'alice' AND currency = 'EUR'");
    const Database::Rows expected_stats{{"1", "3499"}};
    EXPECT_EQ(stats, expected_stats);
    EXPECT_EQ(database_.scalar("SELECT revenue_cents FROM shop.daily_sales WHERE currency = 'EUR'"), 3499);
    // The customer's address never reaches the log in full.
    EXPECT_EQ(worker.process->log().find("alice@example.com"), std::string::npos);
    EXPECT_NE(worker.process->log().find("a***@example.com"), std::string::npos);
}

/// The worker's JSON log lines about one job type: {job_id, trace_id, span_id, parent_span_id} of each.
struct JobSpan {
    std::string job_id;
    std::string trace_id;
    std::string span_id;
    std::string parent_span_id;
    std::string msg;
};

/// The span of the attempt that succeeded: the one whose emitted jobs and calls count.
const JobSpan& succeeded(const std::vector<JobSpan>& spans) {
    const auto found = std::find_if(spans.begin(), spans.end(), [](const JobSpan& span) {
        return span.msg.find("succeeded") != std::string::npos;
    });
    return found != spans.end() ? *found : spans.front();
}

std::vector<JobSpan> spans_of(const std::string& log, const std::string& type, int& unparsed_lines) {
    std::vector<JobSpan> spans;
    simdjson::dom::parser parser;
    std::istringstream lines(log);
    for (std::string line; std::getline(lines, line);) {
        simdjson::dom::object entry;
        if (parser.parse(line).get(entry) != simdjson::SUCCESS) {
            ++unparsed_lines;
            continue;
        }
        std::string_view line_type;
        if (entry["type"].get(line_type) != simdjson::SUCCESS || line_type != type) {
            continue;
        }
        auto field = [&](const char* name) {
            std::string_view value;
            return entry[name].get(value) == simdjson::SUCCESS ? std::string(value) : std::string();
        };
        spans.push_back({field("job_id"), field("trace_id"), field("span_id"), field("parent_span_id"), field("msg")});
    }
    return spans;
}

TEST_F(SagaTest, JsonLogsFollowTheTraceFromTheOrderThroughTheEmittedJobsToTheGatewayCall) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 1250, 10);
    auto worker = start_worker({"--queues", "orders,inventory,payments,emails,projections", "--payment-gateway-url",
                                gateway.url(), "--smtp-url", mail.url(), "--log-level", "debug"},
                               "saga-trace", true, {{"CONVEYOR_LOG_FORMAT", "json"}});
    const std::string trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    const std::string caller_span = "00f067aa0ba902b7";
    auto order = Broker::job("orders.place", order_payload("order-traced", "tracy", {{"sku-1", 1}}), "traced-1");
    amqp::set_header(order.properties.headers, "traceparent", "00-" + trace_id + "-" + caller_span + "-01");
    broker_.publish(std::move(order));
    ASSERT_TRUE(eventually([&] { return settled(1); }, 30s)) << worker.process->log();
    // The receipt is sent in parallel with the projections: settled() does not wait for it.
    ASSERT_TRUE(eventually(
        [&] {
            int ignored = 0;
            return !spans_of(worker.process->log(), "emails.send", ignored).empty();
        },
        30s))
        << worker.process->log();

    const auto log = worker.process->log();
    int unparsed = 0;
    const auto placed = spans_of(log, "orders.place", unparsed);
    const auto reserved = spans_of(log, "inventory.reserve", unparsed);
    const auto answered = spans_of(log, "orders.stock_reserved", unparsed);
    const auto charged = spans_of(log, "payments.charge", unparsed);
    const auto mailed = spans_of(log, "emails.send", unparsed);
    EXPECT_EQ(unparsed, 0) << "every line of a JSON log is a JSON object\n" << log;
    ASSERT_FALSE(placed.empty()) << log;
    ASSERT_FALSE(reserved.empty()) << log;
    ASSERT_FALSE(answered.empty()) << log;
    ASSERT_FALSE(charged.empty()) << log;
    ASSERT_FALSE(mailed.empty()) << log;
    // The order's job is a child of the caller's span; the reservation it asked for is a child of the order's job,
    // inventory's answer a child of the reservation, the charge a child of the answer; the mail is further down
    // the same trace.
    const auto& order_span = succeeded(placed);
    EXPECT_EQ(order_span.job_id, "traced-1");
    EXPECT_EQ(order_span.trace_id, trace_id);
    EXPECT_EQ(order_span.parent_span_id, caller_span);
    EXPECT_EQ(order_span.span_id.size(), 16U);
    EXPECT_NE(order_span.span_id, caller_span);
    const auto& charge_span = succeeded(charged);
    EXPECT_EQ(charge_span.trace_id, trace_id);
    EXPECT_EQ(succeeded(reserved).parent_span_id, order_span.span_id);
    EXPECT_EQ(succeeded(answered).parent_span_id, succeeded(reserved).span_id);
    EXPECT_EQ(charge_span.parent_span_id, succeeded(answered).span_id);
    for (const auto& span : mailed) {
        EXPECT_EQ(span.trace_id, trace_id) << span.job_id;
    }
    // The gateway's request carries the trace, its parent the call's own span (a child of the charge's: see
    // AnOrdersSagaReachesAnOtlpReceiverAsOneConnectedTrace).
    const auto charges = gateway.charges_of("order-traced");
    EXPECT_NE(charges.find(R"("traceparent":"00-)" + trace_id + "-"), std::string::npos) << charges;
    EXPECT_EQ(charges.find(charge_span.span_id), std::string::npos) << charges;
}

TEST_F(SagaTest, AnOrdersSagaReachesAnOtlpReceiverAsOneConnectedTrace) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    OtlpReceiver receiver;
    add_product("sku-1", 700, 10);
    auto worker = start_saga_worker(gateway, mail, {"--otlp-endpoint", receiver.url()}, "saga-otlp");
    const std::string trace_id = "0af7651916cd43dd8448eb211c80319c";
    const std::string caller_span = "b7ad6b7169203331";
    auto order = Broker::job("orders.place", order_payload("order-otlp", "lena", {{"sku-1", 2}}));
    amqp::set_header(order.properties.headers, "traceparent", "00-" + trace_id + "-" + caller_span + "-01");
    broker_.publish(std::move(order));
    ASSERT_TRUE(eventually([&] { return has_status("order-otlp", "confirmed"); }, 30s)) << worker.process->log();

    // Each span's parent is a span of the trace, but for the order's job, whose parent is the caller's.
    std::vector<ReceivedSpan> spans;
    const auto named = [&](const std::string& name) {
        return std::find_if(spans.begin(), spans.end(), [&](const ReceivedSpan& span) { return span.name == name; });
    };
    ASSERT_TRUE(eventually(
        [&] {
            spans = receiver.spans_of(trace_id);
            return named("emails.send") != spans.end() && named("smtp send") != spans.end() &&
                   connected(spans, caller_span);
        },
        30s))
        << receiver.render(trace_id) << worker.process->log();
    EXPECT_EQ(std::count_if(spans.begin(), spans.end(),
                            [&](const ReceivedSpan& span) { return span.parent_span_id == caller_span; }),
              1);
    const auto placed = named("orders.place");
    ASSERT_NE(placed, spans.end());
    EXPECT_EQ(placed->parent_span_id, caller_span);
    EXPECT_EQ(placed->kind, "consumer");
    EXPECT_EQ(placed->service, "conveyor-worker");
    // The order asks inventory, inventory answers, and the answer sets off the charge.
    const auto reserved = named("inventory.reserve");
    ASSERT_NE(reserved, spans.end()) << receiver.render(trace_id);
    EXPECT_EQ(reserved->parent_span_id, placed->span_id);
    const auto answered = named("orders.stock_reserved");
    ASSERT_NE(answered, spans.end()) << receiver.render(trace_id);
    EXPECT_EQ(answered->parent_span_id, reserved->span_id);
    const auto charged = named("payments.charge");
    ASSERT_NE(charged, spans.end());
    EXPECT_EQ(charged->parent_span_id, answered->span_id);
    // The gateway call is a client span of the charge's job, and the gateway saw it as its caller.
    const auto called = named("payment gateway POST charge");
    ASSERT_NE(called, spans.end()) << receiver.render(trace_id);
    EXPECT_EQ(called->kind, "client");
    EXPECT_EQ(called->parent_span_id, charged->span_id);
    EXPECT_NE(gateway.charges_of("order-otlp").find("00-" + trace_id + "-" + called->span_id + "-01"),
              std::string::npos)
        << gateway.charges_of("order-otlp");
    // The database transactions: the order's own, and the charge's, which began after the gateway answered.
    const auto transactions = std::count_if(spans.begin(), spans.end(), [&](const ReceivedSpan& span) {
        return span.name.starts_with("db transaction") &&
               (span.parent_span_id == placed->span_id || span.parent_span_id == charged->span_id);
    });
    EXPECT_EQ(transactions, 2) << receiver.render(trace_id);
    EXPECT_EQ(named("smtp send")->parent_span_id, named("emails.send")->span_id);
    EXPECT_EQ(receiver.stat("/rejected"), 0);
    EXPECT_EQ(worker.metric("conveyor_trace_spans_dropped_total"), 0);
    std::cout << receiver.render(trace_id);
}

TEST_F(SagaTest, ADeclinedPaymentCancelsTheOrderReleasesItsStockOnceAndMailsTheCustomer) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 500, 10);
    gateway.control(R"({"decline_customers": ["bob"]})");
    auto worker = start_saga_worker(gateway, mail, {}, "saga-decline");
    place("order-2", "bob", {{"sku-1", 4}});

    ASSERT_TRUE(eventually([&] { return has_status("order-2", "cancelled"); }, 30s)) << worker.process->log();
    ASSERT_TRUE(eventually([&] { return mail.count("payment_failed") == 1; }, 30s)) << worker.process->log();
    ASSERT_TRUE(eventually([&] { return settled(1); }, 30s)) << worker.process->log();
    EXPECT_EQ(mail.mails().size(), 1U);
    EXPECT_TRUE(stock_is("sku-1", 10));
    EXPECT_EQ(gateway.stat("/charges"), 0);
    EXPECT_EQ(gateway.stat("/declines"), 1);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.payments WHERE status = 'declined'"), 1);
    EXPECT_EQ(mail.count("order_confirmed"), 0);

    // The compensation again, as another system (or a replay) might send it: the stock is not released twice.
    broker_.publish(Broker::job("orders.cancel", R"({"order_id":"order-2","reason":"again"})"));
    ASSERT_TRUE(eventually(
        [&] { return worker.metric("conveyor_jobs_completed_total", {"type=\"orders.cancel\""}) == 2; }, 30s));
    EXPECT_TRUE(stock_is("sku-1", 10));
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.events WHERE type = 'OrderCancelled'"), 1);

    // Confirming a cancelled order is an illegal transition: dead-lettered with that reason, nothing changes.
    broker_.publish(Broker::job("orders.confirm", R"({"order_id":"order-2"})"));
    const auto dead = broker_.take("conveyor.orders.dlq", 1, 30s);
    ASSERT_EQ(dead.size(), 1U) << worker.process->log();
    EXPECT_EQ(header_text(dead[0], "x-conveyor-reason"), "illegal_transition");
    EXPECT_EQ(header_text(dead[0], "x-conveyor-error"), "order order-2 is cancelled; it cannot become confirmed");
    EXPECT_EQ(status_of("order-2"), "cancelled");
}

TEST_F(SagaTest, AConfirmedOrderThatIsCancelledIsRefundedOnceOverAFlakyGatewayAndItsStockGoesBack) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 900, 10);
    auto worker = start_saga_worker(gateway, mail, kQuickPayments, "saga-refund");
    place("order-r1", "carol", {{"sku-1", 3}});
    ASSERT_TRUE(eventually([&] { return has_status("order-r1", "confirmed"); }, 30s)) << worker.process->log();
    EXPECT_TRUE(stock_is("sku-1", 7));

    // The refund meets a 503, then a connection reset after the gateway made it: one refund all the same.
    gateway.control(R"({"fail_next": 1, "reset_after_charge_next": 1})");
    cancel_order("order-r1", "customer changed their mind");
    ASSERT_TRUE(eventually([&] { return has_status("order-r1", "refunded"); }, 40s)) << worker.process->log();
    ASSERT_TRUE(eventually([&] { return settled(1); }, 30s)) << worker.process->log();
    EXPECT_EQ(gateway.stat("/refunds"), 1);
    EXPECT_EQ(gateway.stat("/refunds_by_order/order-r1"), 1);
    EXPECT_EQ(gateway.stat("/replays"), 1);
    EXPECT_TRUE(stock_is("sku-1", 10));
    EXPECT_EQ(story_of("order-r1"),
              "OrderPlaced,StockReserved,PaymentCaptured,OrderConfirmed,RefundRequested,PaymentRefunded,OrderRefunded");
    // The operator's view of the same audit trail, read as the application role.
    const auto history = run_cli({"orders", "history", "order-r1", "--json", "--pg-url", app_pg_url()});
    simdjson::dom::parser parser;
    simdjson::dom::element shown;
    ASSERT_EQ(parser.parse(history).get(shown), simdjson::SUCCESS) << history;
    EXPECT_EQ(std::string_view(shown["status"]), "refunded");
    EXPECT_EQ(std::string_view(shown["status_reason"]), "customer changed their mind");
    std::string types;
    for (const auto event : shown["events"].get_array()) {
        types += fmt::format("{}{}", types.empty() ? "" : ",", std::string_view(event["type"]));
    }
    EXPECT_EQ(types, story_of("order-r1"));
    std::string stock_types;
    for (const auto event : shown["stock_events"].get_array()) {
        stock_types += fmt::format("{}{}", stock_types.empty() ? "" : ",", std::string_view(event["type"]));
    }
    EXPECT_EQ(stock_types, "StockReserved,StockReleased");
    EXPECT_EQ(
        database_.scalar("SELECT count(*) FROM shop.payments WHERE status = 'refunded' AND refund_id LIKE 're_%'"), 1);
    ASSERT_TRUE(eventually([&] { return mail.count("order_refunded") == 1; }, 30s)) << worker.process->log();
    EXPECT_EQ(mail.count("order_confirmed"), 1);
    EXPECT_EQ(mail.mails().size(), 2U);
    EXPECT_EQ(database_.scalar("SELECT lifetime_value_cents FROM shop.customer_stats WHERE customer_id = 'carol'"), 0);
    EXPECT_EQ(database_.scalar("SELECT sum(refunded_cents) FROM shop.daily_sales"), 2700);

    // Cancelling it again changes nothing and asks for no second refund.
    cancel_order("order-r1", "again");
    ASSERT_TRUE(eventually([&] { return completed(worker, "orders.cancel", "success") == 2; }, 30s));
    EXPECT_EQ(gateway.stat("/refunds"), 1);
    EXPECT_TRUE(stock_is("sku-1", 10));
    EXPECT_EQ(status_of("order-r1"), "refunded");
}

TEST_F(SagaTest, AChargeThatGivesUpCancelsItsOrderAndRunningItAgainChargesNothing) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 500, 10);
    // A 400 is the same on every attempt: the charge is dead-lettered at once, and its compensation cancels.
    gateway.control(R"({"fail_next": 1, "fail_status": 400})");
    auto worker = start_saga_worker(gateway, mail, kQuickPayments, "saga-charge-gives-up");
    place("order-g1", "dave", {{"sku-1", 2}});
    ASSERT_TRUE(eventually([&] { return has_status("order-g1", "cancelled"); }, 30s)) << worker.process->log();
    const auto dead = broker_.take("conveyor.payments.dlq", 1, 30s);
    ASSERT_EQ(dead.size(), 1U) << worker.process->log();
    EXPECT_EQ(header_text(dead[0], "x-conveyor-reason"), "permanent_failure");
    EXPECT_TRUE(stock_is("sku-1", 10));
    ASSERT_TRUE(eventually([&] { return mail.count("order_cancelled") == 1; }, 30s)) << worker.process->log();
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.orders WHERE id = 'order-g1' AND status_reason LIKE "
                               "'payments.charge gave up: permanent_failure: payment gateway refused the charge%'"),
              1);
    // Once every call in flight has ended, a refund job looks for a charge nobody heard of, and finds none.
    ASSERT_TRUE(eventually([&] { return completed(worker, "payments.refund", "success") == 1; }, 30s))
        << worker.process->log();
    EXPECT_EQ(gateway.stat("/refunds"), 0);

    // The dead letter replayed: the saga's state decides, and a cancelled order is not charged.
    broker_.publish(Broker::job("payments.charge", std::string(dead[0].message.body)));
    ASSERT_TRUE(eventually([&] { return completed(worker, "payments.charge", "success") == 1; }, 30s));
    EXPECT_EQ(gateway.stat("/charges"), 0);
    EXPECT_EQ(status_of("order-g1"), "cancelled");
    EXPECT_TRUE(stock_is("sku-1", 10));
    ASSERT_TRUE(eventually([&] { return settled(1); }, 30s)) << worker.process->log();
    EXPECT_EQ(mail.mails().size(), 1U);
}

TEST_F(SagaTest, AChargeMadeAfterItsOrderWasCancelledIsRefundedAndTheOrderStaysCancelled) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 400, 10);
    gateway.control(R"({"latency_ms": 1500})");
    auto worker = start_saga_worker(gateway, mail, {"--payment-gateway-timeout", "5s"}, "saga-late-charge");
    place("order-l1", "erin", {{"sku-1", 1}});
    ASSERT_TRUE(eventually([&] { return gateway.stat("/requests") == 1; }, 30s)) << worker.process->log();
    cancel_order("order-l1", "customer changed their mind");
    ASSERT_TRUE(eventually([&] { return gateway.stat("/refunds") == 1; }, 30s)) << worker.process->log();
    // The refund is recorded in a transaction after the gateway answered.
    ASSERT_TRUE(eventually(
        [&] {
            return story_of("order-l1") ==
                   "OrderPlaced,StockReserved,OrderCancelled,LatePaymentCaptured,PaymentRefunded";
        },
        30s))
        << story_of("order-l1");
    ASSERT_TRUE(eventually([&] { return settled(1); }, 30s)) << worker.process->log();
    EXPECT_EQ(status_of("order-l1"), "cancelled");
    EXPECT_TRUE(stock_is("sku-1", 10));
    ASSERT_TRUE(eventually([&] { return mail.count("order_refunded") == 1; }, 30s)) << worker.process->log();
    EXPECT_EQ(mail.count("order_cancelled"), 1);
    EXPECT_EQ(mail.count("order_confirmed"), 0);
    // The cancel's own look for an unheard-of charge, 10 s later, finds it refunded already.
    ASSERT_TRUE(eventually([&] { return completed(worker, "payments.refund", "success") == 2; }, 30s))
        << worker.process->log();
    EXPECT_EQ(gateway.stat("/refunds"), 1);
    EXPECT_EQ(database_.scalar("SELECT lifetime_value_cents FROM shop.customer_stats WHERE customer_id = 'erin'"), 0);
}

TEST_F(SagaTest, AChargeJobCancelledMidCallCancelsItsOrderAndTheChargeItMadeIsFoundAndRefunded) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 400, 10);
    gateway.control(R"({"latency_ms": 2000})");
    auto worker = start_saga_worker(gateway, mail, {"--payment-gateway-timeout", "3s"}, "saga-cancelled-charge");
    broker_.publish(Broker::job("orders.place", order_payload("order-c1", "frank", {{"sku-1", 2}}), "place-c1"));
    ASSERT_TRUE(eventually([&] { return gateway.stat("/requests") == 1; }, 30s)) << worker.process->log();
    // An emitted job's id is its parent's and the emit's position: orders.place → inventory.reserve →
    // orders.stock_reserved → payments.charge, each the first emit of the one before.
    run_cli({"jobs", "cancel", "--pg-url", pg_url(), "place-c1/0/0/0"});
    ASSERT_TRUE(eventually([&] { return has_status("order-c1", "cancelled"); }, 30s)) << worker.process->log();
    EXPECT_EQ(completed(worker, "payments.charge", "cancelled"), 1);
    EXPECT_TRUE(stock_is("sku-1", 10));
    // The gateway finished the charge nobody waited for; the refund job 8 s after the cancel finds and refunds it.
    ASSERT_TRUE(eventually([&] { return gateway.stat("/refunds_by_order/order-c1") == 1; }, 40s))
        << worker.process->log();
    ASSERT_TRUE(eventually(
        [&] {
            return story_of("order-c1") ==
                   "OrderPlaced,StockReserved,OrderCancelled,LatePaymentCaptured,PaymentRefunded";
        },
        30s))
        << story_of("order-c1");
    ASSERT_TRUE(eventually([&] { return settled(1); }, 30s)) << worker.process->log();
    EXPECT_EQ(gateway.stat("/charges"), 1);
    EXPECT_EQ(status_of("order-c1"), "cancelled");
}

TEST_F(SagaTest, AnOrderNotConfirmedInTimeIsCancelledAndItsStockReleased) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 300, 10);
    gateway.control(R"({"refuse": true})");
    auto worker = start_saga_worker(gateway, mail,
                                    {"--order-timeout", "3s", "--payment-gateway-timeout", "1s", "--retry",
                                     "payments.*=attempts:30,base:1s,cap:1s"},
                                    "saga-deadline");
    place("order-t1", "gina", {{"sku-1", 4}});
    ASSERT_TRUE(eventually([&] { return has_status("order-t1", "reserved"); }, 30s)) << worker.process->log();
    // A stray confirm of the reserved order is refused as an illegal transition, and cancels nothing: only a step
    // that gave up sets off the compensation, not a message refused as such.
    broker_.publish(Broker::job("orders.confirm", R"({"order_id":"order-t1"})"));
    const auto refused = broker_.take("conveyor.orders.dlq", 1, 30s);
    ASSERT_EQ(refused.size(), 1U) << worker.process->log();
    EXPECT_EQ(header_text(refused[0], "x-conveyor-reason"), "illegal_transition");
    ASSERT_TRUE(eventually([&] { return has_status("order-t1", "cancelled"); }, 30s)) << worker.process->log();
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.orders WHERE status_reason = 'not confirmed within 3 s'"), 1);
    EXPECT_TRUE(stock_is("sku-1", 10));
    ASSERT_TRUE(eventually([&] { return mail.count("order_cancelled") == 1; }, 30s)) << worker.process->log();

    // The gateway is back: the waiting charge finds its order cancelled and charges nothing.
    gateway.control(R"({"refuse": false})");
    ASSERT_TRUE(eventually([&] { return completed(worker, "payments.charge", "success") == 1; }, 40s))
        << worker.process->log();
    ASSERT_TRUE(eventually([&] { return completed(worker, "payments.refund", "success") == 1; }, 30s))
        << worker.process->log();
    EXPECT_EQ(gateway.stat("/charges"), 0);
    EXPECT_EQ(gateway.stat("/refunds"), 0);
    EXPECT_EQ(completed(worker, "orders.expire", "success"), 1);
}

/// The SQLSTATE a statement fails with, or "" if it succeeds.
std::string refusal_of(Database& database, const std::string& statement) {
    try {
        database.query(statement);
    } catch (const pg::Error& e) {
        return e.sqlstate();
    }
    return {};
}

TEST_F(SagaTest, TheServicesConnectAsAnApplicationRoleThatCanAppendToTheEventStoreButNeverChangeIt) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 500, 10);
    auto worker = start_saga_worker(gateway, mail, {}, "saga-role");
    place("order-a1", "kim", {{"sku-1", 1}});
    ASSERT_TRUE(eventually([&] { return has_status("order-a1", "confirmed"); }, 30s)) << worker.process->log();
    // Every connection the worker holds is the application role's, and it is no superuser.
    const auto roles = database_.query(
        "SELECT DISTINCT a.usename, r.rolsuper FROM pg_stat_activity a JOIN pg_roles r ON r.rolname = a.usename "
        "WHERE a.application_name LIKE 'conveyor-worker %'");
    ASSERT_EQ(roles.size(), 1U);
    EXPECT_EQ(roles[0][0], "conveyor_app");
    EXPECT_EQ(roles[0][1], "f");

    Database app(app_pg_url());
    EXPECT_EQ(refusal_of(app,
                         "INSERT INTO shop.events (aggregate_id, version, type, data) "
                         "VALUES ('audit-probe', 1, 'Probe', '{}')"),
              "");
    constexpr std::string_view kInsufficientPrivilege = "42501";
    EXPECT_EQ(refusal_of(app, "UPDATE shop.events SET type = 'Rewritten' WHERE aggregate_id = 'order-a1'"),
              kInsufficientPrivilege);
    EXPECT_EQ(refusal_of(app, "DELETE FROM shop.events WHERE aggregate_id = 'order-a1'"), kInsufficientPrivilege);
    EXPECT_EQ(refusal_of(app, "TRUNCATE shop.events"), kInsufficientPrivilege);
    // Nor can it switch the append-only triggers off, or grant itself more.
    EXPECT_EQ(refusal_of(app, "SET session_replication_role = replica"), kInsufficientPrivilege);
    EXPECT_EQ(refusal_of(app, "ALTER TABLE shop.events DISABLE TRIGGER events_append_only"), kInsufficientPrivilege);
    // A GRANT from a role without the grant option only warns, and grants nothing.
    (void)refusal_of(app, "GRANT UPDATE, DELETE ON shop.events TO conveyor_app");
    EXPECT_EQ(refusal_of(app, "UPDATE shop.events SET type = 'Rewritten' WHERE aggregate_id = 'order-a1'"),
              kInsufficientPrivilege);
    // The owner is refused by the triggers.
    EXPECT_EQ(refusal_of(database_, "UPDATE shop.events SET type = 'Rewritten' WHERE aggregate_id = 'order-a1'"),
              kInsufficientPrivilege);
    EXPECT_EQ(refusal_of(database_, "DELETE FROM shop.events WHERE aggregate_id = 'order-a1'"), kInsufficientPrivilege);
    EXPECT_EQ(story_of("order-a1"), "OrderPlaced,StockReserved,PaymentCaptured,OrderConfirmed");
    // Inventory's own audit trail holds the same way.
    EXPECT_EQ(refusal_of(app, "UPDATE inventory.events SET type = 'Rewritten' WHERE aggregate_id = 'order-a1'"),
              kInsufficientPrivilege);
    EXPECT_EQ(refusal_of(app, "DELETE FROM inventory.events WHERE aggregate_id = 'order-a1'"), kInsufficientPrivilege);
    EXPECT_EQ(refusal_of(app, "TRUNCATE inventory.events"), kInsufficientPrivilege);
    EXPECT_EQ(refusal_of(database_, "DELETE FROM inventory.events WHERE aggregate_id = 'order-a1'"),
              kInsufficientPrivilege);
    EXPECT_EQ(inventory_story_of("order-a1"), "StockReserved");
}

/// The three read models, copied aside as they are now (before_<model>), to compare a rebuild with.
void copy_read_models(Database& database) {
    for (const auto* model : {"order_summary", "customer_stats", "daily_sales"}) {
        database.query(fmt::format("DROP TABLE IF EXISTS before_{}", model));
        database.query(fmt::format("CREATE TABLE before_{0} AS SELECT * FROM shop.{0}", model));
    }
}

/// Rows by which each read model differs from its copy (copy_read_models), dropping the copies.
std::int64_t differences_from_copies(Database& database) {
    std::int64_t differences = 0;
    for (const auto* model : {"order_summary", "customer_stats", "daily_sales"}) {
        differences += database.scalar(
            fmt::format("SELECT count(*) FROM ((SELECT * FROM shop.{0} EXCEPT ALL SELECT * FROM before_{0}) UNION ALL "
                        "(SELECT * FROM before_{0} EXCEPT ALL SELECT * FROM shop.{0})) AS difference",
                        model));
        database.query(fmt::format("DROP TABLE before_{}", model));
    }
    return differences;
}

TEST_F(SagaTest, ClosedMonthsMoveWholeIntoTheArchiveWhichRebuildsReadAndTheirOrdersChangeNoMore) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 500, 100);
    // Charges retried for as long as the test runs: the unfinished order stays unfinished until the gateway is back.
    auto worker = start_saga_worker(
        gateway, mail, {"--payment-gateway-timeout", "1s", "--retry", "payments.*=attempts:1000,base:1s,cap:1s"},
        "saga-archive");
    for (const auto* order : {"old-1", "old-2", "later-1"}) {
        place(order, "olga", {{"sku-1", 1}});
    }
    ASSERT_TRUE(eventually([&] { return settled(3); }, 30s)) << worker.process->log();
    // An order whose saga has not ended: its charge waits for a gateway that refuses.
    gateway.control(R"({"refuse": true})");
    place("later-2", "piet", {{"sku-1", 1}});
    ASSERT_TRUE(eventually([&] { return has_status("later-2", "reserved"); }, 30s)) << worker.process->log();
    // Placed five and four months ago, as far as retention goes (the owner may; the events keep their times).
    database_.query(
        "UPDATE shop.orders SET placed_at = date_trunc('month', now()) - interval '5 months' + interval '14 days' "
        "WHERE id LIKE 'old-%'");
    database_.query(
        "UPDATE shop.orders SET placed_at = date_trunc('month', now()) - interval '4 months' + interval '14 days' "
        "WHERE id LIKE 'later-%'");
    const std::string old_events =
        "SELECT md5(string_agg(e::text, '|' ORDER BY id)), count(*) FROM {} e "
        "WHERE aggregate_id LIKE 'old-%'";
    const auto before = database_.query(fmt::format(fmt::runtime(old_events), "shop.events"));
    copy_read_models(database_);

    // The older month is archived whole; the later one waits for its unfinished order.
    broker_.publish(Broker::job("orders.archive", R"({"keep_months": 1})"));
    ASSERT_TRUE(eventually([&] { return completed(worker, "orders.archive", "success") == 1; }, 30s))
        << worker.process->log();
    EXPECT_EQ(database_.query(fmt::format(fmt::runtime(old_events), "shop.events_archive")), before)
        << "moved, unchanged";
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.events WHERE aggregate_id LIKE 'old-%'"), 0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.projection_checkpoints WHERE aggregate_id LIKE 'old-%'"), 0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.projection_checkpoints WHERE aggregate_id = 'later-1'"), 3);
    EXPECT_EQ(database_.query("SELECT id FROM shop.orders WHERE archived_at IS NOT NULL ORDER BY id"),
              (Database::Rows{{"old-1"}, {"old-2"}}));
    const Database::Rows archived_month{{"2", before[0][1]}};
    EXPECT_EQ(database_.query("SELECT orders::text, events::text FROM shop.archived_months"), archived_month);
    EXPECT_NE(worker.process->log().find("kept: 1 order(s) not ended"), std::string::npos);

    // A rebuild reads the archive too: each model comes back as it was.
    for (const auto* model : {"order_summary", "customer_stats", "daily_sales"}) {
        broker_.publish(Broker::job("projections.rebuild", fmt::format(R"({{"projection":"{}"}})", model)));
    }
    ASSERT_TRUE(eventually([&] { return completed(worker, "projections.rebuild", "success") == 3; }, 60s));
    EXPECT_EQ(differences_from_copies(database_), 0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.projection_checkpoints WHERE aggregate_id LIKE 'old-%'"), 0)
        << "an archived order needs no checkpoint";

    // An archived order changes no more: its cancellation is refused, and nothing is refunded.
    cancel_order("old-1", "too late");
    const auto dead = broker_.take("conveyor.orders.dlq", 1, 30s);
    ASSERT_EQ(dead.size(), 1U) << worker.process->log();
    EXPECT_EQ(header_text(dead[0], "x-conveyor-reason"), "illegal_transition");
    EXPECT_EQ(status_of("old-1"), "confirmed");
    EXPECT_EQ(gateway.stat("/refunds"), 0);
    // The archive is append-only: to the application role by privilege, to the owner by trigger; an event still in
    // the store leaves it only as a move.
    Database app(app_pg_url());
    constexpr std::string_view kInsufficientPrivilege = "42501";
    EXPECT_EQ(refusal_of(app, "DELETE FROM shop.events_archive"), kInsufficientPrivilege);
    EXPECT_EQ(refusal_of(app, "INSERT INTO shop.events_archive SELECT * FROM shop.events LIMIT 1"),
              kInsufficientPrivilege);
    EXPECT_EQ(refusal_of(database_, "DELETE FROM shop.events_archive"), kInsufficientPrivilege);
    EXPECT_EQ(refusal_of(database_, "UPDATE shop.events_archive SET type = 'Rewritten'"), kInsufficientPrivilege);
    EXPECT_EQ(refusal_of(database_, "DELETE FROM shop.events WHERE aggregate_id = 'later-1'"), kInsufficientPrivilege);

    // Once the later month's last saga ends, the next run archives it.
    gateway.control(R"({"refuse": false})");
    ASSERT_TRUE(eventually([&] { return has_status("later-2", "confirmed"); }, 60s)) << worker.process->log();
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar(
                       "SELECT count(*) FROM shop.projection_checkpoints c JOIN shop.orders o ON o.id = "
                       "c.aggregate_id AND o.version = c.version WHERE o.id = 'later-2'") == 3;
        },
        30s));
    broker_.publish(Broker::job("orders.archive", R"({"keep_months": 1})"));
    ASSERT_TRUE(eventually([&] { return completed(worker, "orders.archive", "success") == 2; }, 30s));
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.orders WHERE archived_at IS NULL"), 0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.archived_months"), 2);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.events"), 0);
}

TEST_F(SagaTest, TheEmailLogKeepsWhatIsYoungerThanItsRetentionAndPrunesTheRestInBatches) {
    auto worker = start_worker({"--queues", "emails"}, "emails-prune");
    const auto add_rows = [&](const std::string& prefix, int count, const std::string& status,
                              const std::string& claimed_until, const std::string& sent_at) {
        database_.query(fmt::format(
            "INSERT INTO shop.email_log (dedupe_key, template, recipient, subject, message_id, status, claimed_by, "
            "claimed_until, sent_at) SELECT '{}-' || g, 'order_confirmed', 'a@example.com', 'Your order', '<m>', "
            "'{}', 'job', {}, {} FROM generate_series(1, {}) AS g",
            prefix, status, claimed_until, sent_at, count));
    };
    add_rows("old", 12'000, "sent", "now() - interval '100 days'", "now() - interval '100 days'");
    add_rows("lapsed", 3, "sending", "now() - interval '100 days'", "NULL");
    add_rows("recent", 5, "sent", "now() - interval '10 days'", "now() - interval '10 days'");
    add_rows("sending", 1, "sending", "now() + interval '1 minute'", "NULL");
    broker_.publish(Broker::job("emails.prune", R"({"keep_days": 30})"));
    ASSERT_TRUE(eventually([&] { return completed(worker, "emails.prune", "success") == 1; }, 60s))
        << worker.process->log();
    EXPECT_EQ(database_.query("SELECT split_part(dedupe_key, '-', 1), count(*)::text FROM shop.email_log GROUP BY 1 "
                              "ORDER BY 1"),
              (Database::Rows{{"recent", "5"}, {"sending", "1"}}));
    EXPECT_NE(worker.process->log().find("12003 row(s) older than 30 day(s) pruned"), std::string::npos)
        << worker.process->log();
}

TEST_F(SagaTest, InventoryMovesAnOrdersStockOnceWhicheverOfItsReservationAndReleaseComesFirst) {
    add_product("sku-1", 500, 10);
    // Inventory alone: its answers to orders wait in conveyor.orders, which no one consumes here.
    auto worker = start_worker({"--queues", "inventory"}, "inventory-alone");
    const auto reserve = [&](const std::string& order_id, int quantity) {
        broker_.publish(Broker::job(
            "inventory.reserve", fmt::format(R"({{"order_id":"{}","items":[{{"product_id":"sku-1","quantity":{}}}]}})",
                                             order_id, quantity)));
    };
    const auto release = [&](const std::string& order_id) {
        broker_.publish(
            Broker::job("inventory.release", fmt::format(R"({{"order_id":"{}","reason":"test"}})", order_id)));
    };
    const auto done = [&](int jobs) {
        return eventually(
            [&] {
                return completed(worker, "inventory.reserve", "success") +
                           completed(worker, "inventory.release", "success") ==
                       jobs;
            },
            30s);
    };
    // Released, then reserved: the order was cancelled while its reservation waited. Nothing is ever taken.
    release("early");
    ASSERT_TRUE(done(1)) << worker.process->log();
    reserve("early", 4);
    ASSERT_TRUE(done(2)) << worker.process->log();
    EXPECT_EQ(stock_of("sku-1"), 10);
    EXPECT_EQ(inventory_story_of("early"), "ReservationWithdrawn");

    // Reserved, reserved again (another job with the same order), released twice: taken once, back once.
    reserve("late", 3);
    ASSERT_TRUE(done(3)) << worker.process->log();
    EXPECT_EQ(stock_of("sku-1"), 7);
    reserve("late", 3);
    ASSERT_TRUE(done(4)) << worker.process->log();
    EXPECT_EQ(stock_of("sku-1"), 7);
    release("late");
    release("late");
    ASSERT_TRUE(done(6)) << worker.process->log();
    EXPECT_EQ(stock_of("sku-1"), 10);
    EXPECT_EQ(inventory_story_of("late"), "StockReserved,StockReleased");

    // Short: nothing taken, and the order hears so. More than there is, on two lines of the same product.
    broker_.publish(Broker::job(
        "inventory.reserve",
        R"({"order_id":"greedy","items":[{"product_id":"sku-1","quantity":6},{"product_id":"sku-1","quantity":5}]})"));
    ASSERT_TRUE(done(7)) << worker.process->log();
    EXPECT_EQ(stock_of("sku-1"), 10);
    EXPECT_EQ(inventory_story_of("greedy"), "StockShort");
    // Orders heard exactly one answer per order that reached a verdict: "late" reserved, "greedy" short.
    const auto answers = broker_.take("conveyor.orders", 2, 10s);
    ASSERT_EQ(answers.size(), 2U);
    std::vector<std::string> types{answers[0].message.routing_key, answers[1].message.routing_key};
    std::sort(types.begin(), types.end());
    EXPECT_EQ(types, (std::vector<std::string>{"orders.stock_reserved", "orders.stock_short"}));
    EXPECT_EQ(broker_.ready("conveyor.orders"), 0U);
}

TEST_F(SagaTest, OutOfStockRejectsTheOrderWithoutChargingAndMailsTheCustomer) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("rare", 100, 1);
    auto worker = start_saga_worker(gateway, mail, {}, "saga-out-of-stock");
    place("order-3", "carol", {{"rare", 2}});
    ASSERT_TRUE(eventually([&] { return mail.count("out_of_stock") == 1; }, 30s)) << worker.process->log();
    ASSERT_TRUE(eventually([&] { return settled(1); }, 30s)) << worker.process->log();
    EXPECT_EQ(mail.mails().size(), 1U);
    EXPECT_EQ(status_of("order-3"), "rejected");
    EXPECT_TRUE(stock_is("rare", 1));
    EXPECT_EQ(inventory_story_of("order-3"), "StockShort");
    EXPECT_EQ(gateway.stat("/requests"), 0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.order_summary WHERE status = 'rejected'"), 1);
}

TEST_F(SagaTest, AFlakyGatewayIsRetriedUnderOneIdempotencyKeyAndChargesOnce) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 700, 10);
    gateway.control(R"({"fail_next": 2, "fail_status": 503})");
    auto worker = start_saga_worker(gateway, mail, {"--retry", "payments.*=attempts:5,base:1s,cap:1s"}, "saga-flaky");
    place("order-4", "dave", {{"sku-1", 1}});
    ASSERT_TRUE(eventually([&] { return has_status("order-4", "confirmed"); }, 40s)) << worker.process->log();
    EXPECT_EQ(gateway.stat("/by_status/503"), 2);
    EXPECT_EQ(gateway.stat("/requests"), 3);
    EXPECT_EQ(gateway.stat("/charges"), 1);
    EXPECT_EQ(gateway.stat("/idempotency_keys"), 1);
    EXPECT_EQ(worker.metric("conveyor_jobs_completed_total", {"type=\"payments.charge\"", "outcome=\"retry\""}), 2);
    EXPECT_EQ(worker.metric("conveyor_payment_gateway_requests_total", {"result=\"5xx\""}), 2);
}

TEST_F(SagaTest, AResponseLostAfterTheChargeIsRecoveredByTheRetryWithoutASecondCharge) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 700, 10);
    gateway.control(R"({"reset_after_charge_next": 1})");
    auto worker = start_saga_worker(gateway, mail, {"--retry", "payments.*=attempts:5,base:1s,cap:1s"}, "saga-lost");
    place("order-5", "erin", {{"sku-1", 1}});
    ASSERT_TRUE(eventually([&] { return has_status("order-5", "confirmed"); }, 40s)) << worker.process->log();
    EXPECT_EQ(gateway.stat("/charges"), 1);
    EXPECT_EQ(gateway.stat("/replays"), 1);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.payments"), 1);
    EXPECT_EQ(worker.metric("conveyor_payment_gateway_requests_total", {"result=\"broken\""}), 1);
}

TEST_F(SagaTest, AGatewayThatChargesButAnswersTooLateIsRetriedAndTheRetryFindsTheSameCharge) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 700, 10);
    // The gateway takes 3 s, charges, and answers a client that gave up after 1 s.
    gateway.control(R"({"latency_ms": 3000})");
    auto worker = start_saga_worker(
        gateway, mail, {"--payment-gateway-timeout", "1s", "--retry", "payments.*=attempts:10,base:1s,cap:1s"},
        "saga-timeout");
    place("order-6", "fred", {{"sku-1", 1}});
    ASSERT_TRUE(eventually(
        [&] { return worker.metric("conveyor_payment_gateway_requests_total", {"result=\"timeout\""}) >= 1; }, 30s))
        << worker.process->log();
    gateway.control(R"({"latency_ms": 0})");
    ASSERT_TRUE(eventually([&] { return has_status("order-6", "confirmed"); }, 40s)) << worker.process->log();
    EXPECT_EQ(gateway.stat("/charges"), 1);
    EXPECT_GE(gateway.stat("/replays"), 1) << "the retry did not get the charge the timed-out request made";
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.payments"), 1);
}

TEST_F(SagaTest, AGatewayOutageOpensTheCircuitAndPaymentsWaitWithoutUsingUpTheirAttempts) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("sku-1", 100, 100);
    gateway.control(R"({"refuse": true})");
    // Two attempts each: without the circuit breaker, 20 payments against a dead gateway would be dead letters
    // within seconds.
    auto worker = start_saga_worker(gateway, mail,
                                    {"--retry", "payments.*=attempts:2,base:1s,cap:1s", "--payment-circuit-failures",
                                     "3", "--payment-circuit-open-for", "2s", "--heartbeat-interval", "1s"},
                                    "saga-outage");
    // What the console shows of this worker's circuit: its heartbeat's record.
    const auto recorded_circuit = [&] {
        const auto rows = database_.query(
            "SELECT circuit_breakers->>'payment_gateway' FROM conveyor.workers WHERE pid = $1::int "
            "ORDER BY started_at DESC LIMIT 1",
            {std::to_string(worker.process->pid())});
        return rows.empty() ? std::string() : rows[0][0];
    };
    for (int i = 0; i < 20; ++i) {
        place(fmt::format("outage-{}", i), fmt::format("c{}", i), {{"sku-1", 1}});
    }
    ASSERT_TRUE(eventually(
        [&] { return worker.metric("conveyor_circuit_breaker_state", {"circuit=\"payment_gateway\""}) == 2; }, 30s))
        << worker.process->log();
    const auto opened = std::chrono::steady_clock::now();
    const auto calls_when_opened = worker.metric("conveyor_payment_gateway_requests_total");
    EXPECT_TRUE(eventually([&] { return recorded_circuit() != "closed" && !recorded_circuit().empty(); }, 5s))
        << "the heartbeat did not record the open circuit: " << recorded_circuit();
    // The jobs keep waiting on the open circuit: each wait is a retry that does not count as an attempt.
    ASSERT_TRUE(eventually(
        [&] {
            return worker.metric("conveyor_jobs_completed_total", {"type=\"payments.charge\"", "outcome=\"retry\""}) >=
                   60;
        },
        40s))
        << worker.process->log();
    EXPECT_EQ(broker_.ready("conveyor.payments.dlq"), 0U);
    // While open, the gateway sees one trial call per 2 s interval, not one call per waiting job.
    const auto intervals =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - opened) / 2;
    EXPECT_LE(worker.metric("conveyor_payment_gateway_requests_total") - calls_when_opened,
              static_cast<double>(intervals.count() + 2));

    gateway.control(R"({"refuse": false})");
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar(
                       "SELECT count(*) FROM shop.orders WHERE status = "
                       "'confirmed'") == 20;
        },
        60s))
        << worker.process->log();
    EXPECT_EQ(gateway.stat("/charges"), 20);
    EXPECT_EQ(broker_.ready("conveyor.payments.dlq"), 0U);
    EXPECT_TRUE(eventually(
        [&] { return worker.metric("conveyor_circuit_breaker_state", {"circuit=\"payment_gateway\""}) == 0; }, 10s));
    EXPECT_TRUE(eventually([&] { return recorded_circuit() == "closed"; }, 5s)) << recorded_circuit();
}

TEST_F(SagaTest, ConcurrentOrdersForScarceStockNeverOversellAndNeverDeadlock) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    add_product("hot-a", 100, 50);
    add_product("hot-b", 100, 1000);
    auto worker = start_saga_worker(gateway, mail, kQuickPayments, "saga-oversell");
    // Every order takes both products, listed in either order: rows locked in payload order would deadlock.
    std::mt19937 random(7);
    std::vector<amqp::Message> orders;
    for (int i = 0; i < 200; ++i) {
        std::vector<Line> lines{{"hot-a", 1}, {"hot-b", 1}};
        if (random() % 2 == 0) {
            std::swap(lines[0], lines[1]);
        }
        orders.push_back(
            Broker::job("orders.place", order_payload(fmt::format("rush-{}", i), fmt::format("buyer-{}", i), lines)));
    }
    broker_.publish_all(std::move(orders));
    // While the rest are still being placed, 40 orders placed already are cancelled, whatever their state: the
    // stock they release goes to later orders, and the paid ones are refunded.
    ASSERT_TRUE(eventually([&] { return database_.scalar("SELECT count(*) FROM shop.orders") >= 100; }, 60s));
    const auto placed = database_.query("SELECT id FROM shop.orders ORDER BY random() LIMIT 40");
    for (const auto& row : placed) {
        cancel_order(row[0], "changed their mind");
    }
    ASSERT_TRUE(eventually([&] { return settled(200); }, 90s)) << worker.process->log();
    const auto confirmed = database_.scalar("SELECT count(*) FROM shop.orders WHERE status = 'confirmed'");
    EXPECT_LE(confirmed, 50);
    EXPECT_GT(database_.scalar("SELECT count(*) FROM shop.orders WHERE status IN ('cancelled', 'refunded')"), 0);
    EXPECT_TRUE(stock_is("hot-a", 50 - confirmed));
    EXPECT_TRUE(stock_is("hot-b", 1000 - confirmed));
    // Every charge made is on record, every refund too, and each order was charged and refunded at most once.
    ASSERT_TRUE(eventually(
        [&] {
            return gateway.stat("/refunds") ==
                   database_.scalar("SELECT count(*) FROM shop.payments WHERE status = 'refunded'");
        },
        30s));
    EXPECT_EQ(gateway.stat("/charges"),
              database_.scalar("SELECT count(*) FROM shop.payments WHERE status IN ('captured', 'refunded')"));
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.orders o JOIN shop.payments p ON p.order_id = o.id "
                               "WHERE o.status = 'confirmed' AND p.status <> 'captured'"),
              0);
    EXPECT_EQ(worker.metric("conveyor_jobs_completed_total", {"type=\"orders.place\"", "outcome=\"retry\""}), 0);
    EXPECT_EQ(worker.process->log().find("40P01"), std::string::npos) << "a deadlock was reported";
}

TEST_F(SagaTest, AnEventThatArrivesBeforeItsPredecessorWaitsAndTheModelIsNeverCorrupted) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    auto worker =
        start_saga_worker(gateway, mail, {"--retry", "projections.*=attempts:20,base:1s,cap:1s"}, "saga-order");
    const std::string placed = R"({"customer_id":"zoe","currency":"EUR","total_cents":900,"item_count":1})";
    database_.query(
        "INSERT INTO shop.events (aggregate_id, version, type, data) VALUES "
        "('late-1', 1, 'OrderPlaced', $1), ('late-1', 3, 'PaymentCaptured', "
        "'{\"customer_id\":\"zoe\",\"currency\":\"EUR\",\"amount_cents\":900}')",
        {placed});
    const auto third = database_.scalar("SELECT id FROM shop.events WHERE aggregate_id = 'late-1' AND version = 3");
    broker_.publish(Broker::job("projections.update", fmt::format(R"({{"event_id":{}}})", third)));
    ASSERT_TRUE(eventually(
        [&] {
            return worker.metric("conveyor_jobs_completed_total",
                                 {"type=\"projections.update\"", "outcome=\"retry\""}) >= 1;
        },
        30s))
        << worker.process->log();
    // Nothing was applied past the gap: no model shows a payment the order never reached.
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.daily_sales"), 0);
    EXPECT_EQ(database_.scalar("SELECT coalesce(max(version), 0) FROM shop.projection_checkpoints "
                               "WHERE aggregate_id = 'late-1'"),
              0);

    database_.query(
        "INSERT INTO shop.events (aggregate_id, version, type, data) VALUES ('late-1', 2, "
        "'StockReserved', '{}')");
    ASSERT_TRUE(eventually(
        [&] {
            return database_.scalar(
                       "SELECT count(*) FROM shop.projection_checkpoints WHERE aggregate_id = 'late-1' "
                       "AND version = 3") == 3;
        },
        30s))
        << worker.process->log();
    const auto summary = database_.query("SELECT status FROM shop.order_summary WHERE order_id = 'late-1'");
    const Database::Rows paid{{"paid"}};
    EXPECT_EQ(summary, paid);
    EXPECT_EQ(database_.scalar("SELECT revenue_cents FROM shop.daily_sales"), 900);
}

TEST_F(SagaTest, MailIsRetriedOnTemporaryRefusalsDeadLetteredOnPermanentOnesAndSentOncePerDedupeKey) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    auto worker = start_saga_worker(gateway, mail, {"--retry", "emails.*=attempts:5,base:1s,cap:1s"}, "saga-mail");
    const auto email = [](const std::string& to, const std::string& key) {
        return fmt::format(
            R"({{"template":"payment_failed","to":"{}","data":{{"order_id":"m-1","reason":"card declined"}},"dedupe_key":"{}"}})",
            to, key);
    };
    broker_.publish(Broker::job("emails.send", email("frank+flaky@example.com", "flaky")));
    broker_.publish(Broker::job("emails.send", email("gina+reject@example.com", "rejected")));
    broker_.publish(Broker::job("emails.send", email("hank@example.com", "twice")));
    broker_.publish(Broker::job("emails.send", email("hank@example.com", "twice")));

    const auto dead = broker_.take("conveyor.emails.dlq", 1, 30s);
    ASSERT_EQ(dead.size(), 1U) << worker.process->log();
    EXPECT_EQ(header_text(dead[0], "x-conveyor-reason"), "permanent_failure");
    EXPECT_NE(header_text(dead[0], "x-conveyor-error").find("550"), std::string::npos)
        << header_text(dead[0], "x-conveyor-error");
    EXPECT_EQ(header_text(dead[0], "x-conveyor-error").find("gina+reject@"), std::string::npos)
        << "the address is masked";
    ASSERT_TRUE(eventually([&] { return mail.mails().size() == 2; }, 30s)) << worker.process->log();
    ASSERT_TRUE(eventually(
        [&] {
            return worker.metric("conveyor_jobs_completed_total", {"type=\"emails.send\"", "outcome=\"success\""}) == 3;
        },
        30s))
        << worker.process->log();
    std::multiset<std::string> recipients;
    for (const auto& captured : mail.mails()) {
        recipients.insert(captured.to);
    }
    const std::multiset<std::string> expected{"frank+flaky@example.com", "hank@example.com"};
    EXPECT_EQ(recipients, expected);
    // The flaky address's retry, and perhaps a wait of the second "twice" job while the first held the claim.
    const auto retries = worker.metric("conveyor_jobs_completed_total", {"type=\"emails.send\"", "outcome=\"retry\""});
    EXPECT_GE(retries, 1);
    EXPECT_LE(retries, 2);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.email_log"), 2);
}

TEST_F(SagaTest, PaymentsReachAGatewayOverTlsAndVerifyItsCertificate) {
    PaymentGatewayServer gateway(true);
    SmtpSink mail;
    add_product("sku-1", 100, 10);
    auto worker =
        start_saga_worker(gateway, mail, {"--payment-gateway-ca-file", PaymentGatewayServer::ca_file()}, "saga-tls");
    place("order-tls", "ivy", {{"sku-1", 1}});
    ASSERT_TRUE(eventually([&] { return has_status("order-tls", "confirmed"); }, 30s)) << worker.process->log();
    EXPECT_EQ(gateway.stat("/charges"), 1);
}

TEST_F(SagaTest, AGatewayWhoseCertificateIsNotTrustedIsNeverSentACharge) {
    PaymentGatewayServer gateway(true);
    SmtpSink mail;
    add_product("sku-1", 100, 10);
    // No CA file: the system's store does not know the local CA, so the handshake must fail.
    auto worker = start_saga_worker(gateway, mail, {"--retry", "payments.*=attempts:1"}, "saga-tls-untrusted");
    place("order-untrusted", "jack", {{"sku-1", 1}});
    const auto dead = broker_.take("conveyor.payments.dlq", 1, 30s);
    ASSERT_EQ(dead.size(), 1U) << worker.process->log();
    EXPECT_NE(header_text(dead[0], "x-conveyor-error").find("TLS handshake"), std::string::npos)
        << header_text(dead[0], "x-conveyor-error");
    EXPECT_EQ(gateway.stat("/requests"), 0);
    // The charge gave up, so its compensation cancelled the order.
    EXPECT_TRUE(eventually([&] { return has_status("order-untrusted", "cancelled"); }, 30s)) << worker.process->log();
    EXPECT_TRUE(stock_is("sku-1", 10));
}

TEST_F(SagaTest, AnInvalidOrderIsDeadLetteredWithAPreciseReason) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    auto worker = start_saga_worker(gateway, mail, {}, "saga-invalid");
    broker_.publish(Broker::job(
        "orders.place",
        R"({"order_id":"bad-1","customer":{"id":"kim","email":"not-an-address"},"items":[{"product_id":"x","quantity":1}],"currency":"EUR"})"));
    const auto dead = broker_.take("conveyor.orders.dlq", 1, 30s);
    ASSERT_EQ(dead.size(), 1U) << worker.process->log();
    EXPECT_EQ(header_text(dead[0], "x-conveyor-reason"), "invalid_payload");
    EXPECT_EQ(header_text(dead[0], "x-conveyor-error"),
              "'customer.email' must be an email address (local@domain.tld, no spaces, at most 254 characters)");
    EXPECT_EQ(status_of("bad-1"), "(none)");
}

/// The issue's storm: 5,000 random orders (some short of stock, some declined) through a gateway that refuses
/// connections for a while, answers 503 and hangs past the client's timeout, with 300 orders cancelled at random
/// moments (paid and confirmed ones among them) and the worker SIGKILLed midway; the read models are rebuilt in
/// the middle of it. Afterwards every order has ended, the books balance, and the event store replays into the same
/// read models.
TEST_F(SagaTest, FiveThousandOrdersThroughDeclinesOutagesTimeoutsCancellationsAndAKilledWorkerAllEndAndBalance) {
    PaymentGatewayServer gateway;
    SmtpSink mail;
    OtlpReceiver receiver;
    std::map<std::string, std::int64_t> initial_stock;
    for (int p = 0; p < 20; ++p) {
        // A few scarce products make some orders fail for stock; most have plenty.
        const auto product = fmt::format("p{}", p);
        initial_stock[product] = p < 3 ? 40 : 100'000;
        add_product(product, 100 + 37 * p, initial_stock[product]);
    }
    gateway.control(R"({"decline_customers": ["cust-7", "cust-13", "cust-99"], "latency_ms": 2})");
    const std::vector<std::string> worker_args{"--concurrency",
                                               "200",
                                               "--otlp-endpoint",
                                               receiver.url(),
                                               "--payment-gateway-timeout",
                                               "1s",
                                               "--retry",
                                               "payments.*=attempts:8,base:1s,cap:2s",
                                               "--payment-circuit-open-for",
                                               "2s"};
    auto worker = start_saga_worker(gateway, mail, worker_args, "saga-storm");
    std::mt19937 random(2026);
    constexpr int kOrders = 5000;
    std::vector<amqp::Message> orders;
    for (int i = 0; i < kOrders; ++i) {
        std::vector<Line> lines;
        const auto line_count = 1 + random() % 3;
        for (std::uint32_t l = 0; l < line_count; ++l) {
            lines.push_back({fmt::format("p{}", random() % 20), static_cast<int>(1 + random() % 3)});
        }
        orders.push_back(
            Broker::job("orders.place", order_payload(fmt::format("r-{}", i), fmt::format("cust-{}", random() % 300),
                                                      lines, random() % 4 == 0 ? "USD" : "EUR")));
        // Callers that trace every order and sample one: the others' spans are not recorded.
        amqp::set_header(orders.back().properties.headers, "traceparent",
                         fmt::format("00-{:032x}-{:016x}-00", i + 1, i + 1));
    }
    // The sampled order, placed after the restart.
    const std::string sampled_trace = "5b8efff798038103d269b633813fc60c";
    const std::string caller_span = "eee19b7ec3c1b174";
    amqp::set_header(orders.back().properties.headers, "traceparent",
                     "00-" + sampled_trace + "-" + caller_span + "-01");
    std::vector<amqp::Message> first_half(std::make_move_iterator(orders.begin()),
                                          std::make_move_iterator(orders.begin() + kOrders / 2));
    std::vector<amqp::Message> second_half(std::make_move_iterator(orders.begin() + kOrders / 2),
                                           std::make_move_iterator(orders.end()));
    broker_.publish_all(std::move(first_half));
    const auto placed = [&] { return database_.scalar("SELECT count(*) FROM shop.orders"); };

    // The gateway goes down (connections refused), comes back answering 503s, then hangs on a few calls.
    ASSERT_TRUE(eventually([&] { return placed() >= 500; }, 60s)) << worker.process->log().substr(0, 20'000);
    gateway.control(R"({"refuse": true})");
    std::this_thread::sleep_for(3s);
    gateway.control(R"({"refuse": false, "fail_next": 8, "fail_status": 503, "hang_next": 4})");
    // Cancellations of orders placed so far: half of them paid or confirmed ones, which are refunded, half whatever
    // their state.
    const auto cancel_some = [&](int count) {
        const auto chosen = database_.query(fmt::format(
            "(SELECT id FROM shop.orders WHERE status IN ('paid', 'confirmed') ORDER BY random() LIMIT {0}) UNION "
            "(SELECT id FROM shop.orders ORDER BY random() LIMIT {0})",
            count / 2));
        for (const auto& row : chosen) {
            cancel_order(row[0], "the customer changed their mind");
        }
    };
    cancel_some(150);

    // The worker dies mid-flight: whatever it had taken and not acknowledged comes back to its successor.
    ASSERT_TRUE(eventually([&] { return placed() >= 1500; }, 90s)) << worker.process->log().substr(0, 20'000);
    worker.process->signal(SIGKILL);
    ASSERT_TRUE(worker.process->wait(10s).has_value());
    // Every event appended before the kill: the end of the run must find each of them unchanged.
    const auto kept = database_.query("SELECT max(id), md5(string_agg(e::text, '|' ORDER BY id)) FROM shop.events e");
    worker = start_saga_worker(gateway, mail, worker_args, "saga-storm-restarted");

    const std::vector<std::string> projections{"order_summary", "customer_stats", "daily_sales"};
    for (const auto& projection : projections) {
        broker_.publish(Broker::job("projections.rebuild", fmt::format(R"({{"projection":"{}"}})", projection)));
    }
    broker_.publish_all(std::move(second_half));
    ASSERT_TRUE(eventually([&] { return placed() >= 4000; }, 120s)) << worker.process->log().substr(0, 20'000);
    cancel_some(150);
    ASSERT_TRUE(eventually([&] { return settled(kOrders); }, 300s)) << worker.process->log().substr(0, 20'000);
    // The last lookups for charges nobody heard of come 6 s after their cancellations; then nothing moves.
    std::this_thread::sleep_for(7s);
    ASSERT_TRUE(idle(worker)) << worker.process->log().substr(0, 20'000);
    ASSERT_TRUE(settled(kOrders));
    check_books_balance(gateway, initial_stock);
    check_emails_match_stories(mail);
    EXPECT_EQ(database_.query(fmt::format("SELECT md5(string_agg(e::text, '|' ORDER BY id)) FROM shop.events e "
                                          "WHERE id <= {}",
                                          kept[0][0]))[0][0],
              kept[0][1])
        << "an event appended before the kill changed";
    check_rebuilds_equal_incremental_models(worker, projections, kOrders);
    check_one_connected_trace(receiver, sampled_trace, caller_span);
}

}  // namespace
}  // namespace conveyor::testing
