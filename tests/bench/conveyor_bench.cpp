// Benchmark drivers. The raw ceiling is plain blocking rabbitmq-c on two threads, as fast as such a client goes
// with the same durability as Conveyor (persistent messages, a quorum queue, publisher confirms with a window of
// 1,000, prefetch 500, one multiple ack per 100 deliveries), so the ratio to it measures what Conveyor's runtime
// costs over the best a plain client does.
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <fmt/format.h>
#include <simdjson.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "conveyor/core/logging.hpp"
#include "test_support.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using conveyor::amqp::Url;

amqp_bytes_t bytes(std::string_view s) {
    return {s.size(), const_cast<char*>(s.data())};
}

void check(amqp_connection_state_t conn, const char* what) {
    const auto reply = amqp_get_rpc_reply(conn);
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        throw std::runtime_error(fmt::format("{} failed (reply type {})", what, static_cast<int>(reply.reply_type)));
    }
}

/// A blocking rabbitmq-c connection with channel 1 open.
class RawConnection {
  public:
    explicit RawConnection(const Url& url) : conn_(amqp_new_connection()) {
        auto* socket = amqp_tcp_socket_new(conn_);
        const auto& broker = url.endpoints.front();
        if (socket == nullptr || amqp_socket_open(socket, broker.host.c_str(), broker.port) != AMQP_STATUS_OK) {
            throw std::runtime_error("cannot connect to " + url.redacted());
        }
        const auto reply = amqp_login(conn_, url.vhost.c_str(), 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, url.user.c_str(),
                                      url.password.c_str());
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
            throw std::runtime_error("login failed");
        }
        amqp_channel_open(conn_, 1);
        check(conn_, "channel.open");
    }
    ~RawConnection() {
        amqp_channel_close(conn_, 1, AMQP_REPLY_SUCCESS);
        amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(conn_);
    }
    RawConnection(const RawConnection&) = delete;
    RawConnection& operator=(const RawConnection&) = delete;
    [[nodiscard]] amqp_connection_state_t get() const { return conn_; }

  private:
    amqp_connection_state_t conn_;
};

std::int64_t epoch_millis() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

/// The body of message number n.
using BodyOf = std::function<std::string(std::uint64_t)>;

/// An orders.place payload: a unique order from one of 1,000 customers for one to three of 100 products, as
/// tests/bench/run seeds them (bench-p0 … bench-p99, stock enough for any run).
std::string order_payload(std::uint64_t n) {
    const auto lines = 1 + n % 3;
    std::string items;
    for (std::uint64_t line = 0; line < lines; ++line) {
        items += fmt::format(R"({}{{"product_id":"bench-p{}","quantity":{}}})", line == 0 ? "" : ",",
                             (n * 7 + line * 31) % 100, 1 + (n + line) % 2);
    }
    return fmt::format(
        R"({{"order_id":"bench-{}-{}","customer":{{"id":"bench-c{}","email":"c{}@bench.example"}},"items":[{}],"currency":"EUR"}})",
        ::getpid(), n, n % 1000, n % 1000, items);
}

/// How publish() sends.
struct PublishOptions {
    /// Gets each message's publish time in epoch milliseconds.
    std::vector<std::int64_t>* sent_at = nullptr;
    /// Paced at this rate; 0 publishes as fast as the confirms allow.
    double per_second = 0;
    /// The x-conveyor-priority header of every job, if not empty.
    std::string priority;
};

/// Publishes `count` persistent messages with confirms, at most `window` unconfirmed, each shaped as a job (the raw
/// ceiling's too, so that it moves the same bytes): a message id "bench-<pid>-<n>" and x-conveyor-enqueued-at.
void publish(const Url& url, const std::string& exchange, const std::string& routing_key, const BodyOf& body_of,
             std::uint64_t count, unsigned window, const PublishOptions& options = {}) {
    const auto per_second = options.per_second;
    auto* sent_at = options.sent_at;
    const auto started = Clock::now();
    RawConnection connection(url);
    auto* conn = connection.get();
    amqp_confirm_select(conn, 1);
    check(conn, "confirm.select");
    std::uint64_t sent = 0;
    std::uint64_t confirmed = 0;
    auto wait_for_confirm = [&] {
        amqp_frame_t frame;
        if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) {
            throw std::runtime_error("lost the connection while waiting for confirms");
        }
        if (frame.frame_type != AMQP_FRAME_METHOD) {
            return;
        }
        if (frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
            throw std::runtime_error("broker nacked a publish");
        }
        if (frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            const auto* ack = static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
            // RabbitMQ confirms in publish order, so the highest tag seen bounds what is still outstanding.
            confirmed = std::max(confirmed, ack->delivery_tag);
        }
        amqp_maybe_release_buffers(conn);
    };
    while (sent < count) {
        while (sent - confirmed >= window) {
            wait_for_confirm();
        }
        // Paced before the enqueued-at stamp, which must say when the job was sent.
        if (per_second > 0) {
            std::this_thread::sleep_until(started +
                                          std::chrono::duration_cast<Clock::duration>(
                                              std::chrono::duration<double>(static_cast<double>(sent) / per_second)));
        }
        amqp_basic_properties_t props{};
        props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
        props.delivery_mode = 2;
        props.content_type = bytes("application/json");
        const auto id = fmt::format("bench-{}-{}", ::getpid(), sent);
        props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
        props.message_id = bytes(id);
        std::array<amqp_table_entry_t, 2> headers{};
        headers[0].key = bytes("x-conveyor-enqueued-at");
        headers[0].value.kind = AMQP_FIELD_KIND_I64;
        headers[0].value.value.i64 = epoch_millis();
        headers[1].key = bytes("x-conveyor-priority");
        headers[1].value.kind = AMQP_FIELD_KIND_UTF8;
        headers[1].value.value.bytes = bytes(options.priority);
        props.headers = {options.priority.empty() ? 1 : 2, headers.data()};
        const auto body = body_of(sent);
        if (sent_at != nullptr) {
            sent_at->push_back(epoch_millis());
        }
        if (amqp_basic_publish(conn, 1, bytes(exchange), bytes(routing_key), 0, 0, &props, bytes(body)) !=
            AMQP_STATUS_OK) {
            throw std::runtime_error("basic.publish failed");
        }
        ++sent;
    }
    while (confirmed < sent) {
        wait_for_confirm();
    }
}

/// A durable topic exchange routing "bench.#" to a quorum queue with no other arguments.
void declare_plain_path(amqp_connection_state_t conn, const std::string& exchange, const std::string& queue) {
    amqp_exchange_declare(conn, 1, bytes(exchange), bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
    check(conn, "exchange.declare");
    amqp_table_entry_t quorum{bytes("x-queue-type"), {AMQP_FIELD_KIND_UTF8, {}}};
    quorum.value.value.bytes = bytes("quorum");
    const amqp_table_t arguments{1, &quorum};
    amqp_queue_declare(conn, 1, bytes(queue), 0, 1, 0, 0, arguments);
    check(conn, "queue.declare");
    amqp_queue_bind(conn, 1, bytes(queue), bytes(exchange), bytes("bench.#"), amqp_empty_table);
    check(conn, "queue.bind");
}

constexpr std::uint64_t kAckEvery = 100;

/// The raw consumer: basic.consume with manual acks, until `count` arrived: one ack (multiple) per kAckEvery
/// deliveries, as the best plain client would, and the last ones at the end.
void consume(const Url& url, const std::string& queue, std::uint64_t count, unsigned prefetch) {
    RawConnection connection(url);
    auto* conn = connection.get();
    amqp_basic_qos(conn, 1, 0, static_cast<std::uint16_t>(prefetch), 0);
    check(conn, "basic.qos");
    amqp_basic_consume(conn, 1, bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    check(conn, "basic.consume");
    for (std::uint64_t received = 0; received < count; ++received) {
        amqp_envelope_t envelope;
        amqp_maybe_release_buffers(conn);
        const auto reply = amqp_consume_message(conn, &envelope, nullptr, 0);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
            throw std::runtime_error("consume failed");
        }
        if ((received + 1) % kAckEvery == 0 || received + 1 == count) {
            amqp_basic_ack(conn, 1, envelope.delivery_tag, 1);
        }
        amqp_destroy_envelope(&envelope);
    }
}

std::int64_t epoch_micros() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

/// Consumes `count` messages and returns when each arrived (epoch microseconds), by message id.
std::map<std::string, std::int64_t> consume_timed(const Url& url, const std::string& queue, std::uint64_t count) {
    RawConnection connection(url);
    auto* conn = connection.get();
    amqp_basic_consume(conn, 1, bytes(queue), amqp_empty_bytes, 0, 1, 0, amqp_empty_table);
    check(conn, "basic.consume");
    std::map<std::string, std::int64_t> arrivals;
    const timeval patience{30, 0};
    while (arrivals.size() < count) {
        amqp_envelope_t envelope;
        amqp_maybe_release_buffers(conn);
        const auto reply = amqp_consume_message(conn, &envelope, &patience, 0);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
            throw std::runtime_error(fmt::format("consume failed after {} of {} messages", arrivals.size(), count));
        }
        const auto& id = envelope.message.properties.message_id;
        arrivals.emplace(std::string(static_cast<const char*>(id.bytes), id.len), epoch_micros());
        amqp_destroy_envelope(&envelope);
    }
    return arrivals;
}

double percentile_ms(std::vector<double> micros, double q) {
    std::sort(micros.begin(), micros.end());
    const auto index = static_cast<std::size_t>(q * static_cast<double>(micros.size() - 1));
    return micros[index] / 1000.0;
}

/// Commit → in a consumer's hands through conveyor.enqueue() and a running conveyor-scheduler, paced at `rate`;
/// and, as the baseline, the same through a direct publish with confirm.
int run_relay_latency(const Url& url, std::uint64_t count, double rate) {
    const std::string queue = "conveyor.diag";
    const auto interval = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / rate));
    std::map<std::string, std::int64_t> committed;
    {
        std::map<std::string, std::int64_t> arrivals;
        std::thread consumer([&] { arrivals = consume_timed(url, queue, count); });
        conveyor::testing::Database database;
        auto next = Clock::now();
        for (std::uint64_t i = 0; i < count; ++i) {
            std::this_thread::sleep_until(next);
            next += interval;
            // From the start of the enqueueing statement (it commits on return): an upper bound on commit → arrival.
            const auto started = epoch_micros();
            const auto id = database.query("SELECT conveyor.enqueue('diag.noop', '{}')")[0][0];
            committed.emplace(id, started);
        }
        consumer.join();
        std::vector<double> relay;
        for (const auto& [id, at] : committed) {
            relay.push_back(static_cast<double>(arrivals.at(id) - at));
        }
        std::vector<std::int64_t> sent_at;
        std::map<std::string, std::int64_t> direct_arrivals;
        std::thread direct_consumer([&] { direct_arrivals = consume_timed(url, queue, count); });
        publish(url, "conveyor.jobs", "diag.noop", [](std::uint64_t) { return std::string("{}"); }, count, 1,
                {.sent_at = &sent_at, .per_second = rate, .priority = {}});
        direct_consumer.join();
        std::vector<double> direct;
        for (std::uint64_t i = 0; i < count; ++i) {
            direct.push_back(
                static_cast<double>(direct_arrivals.at(fmt::format("bench-{}-{}", ::getpid(), i)) - sent_at[i] * 1000));
        }
        std::cout
            << fmt::format(
                   R"({{"name":"relay_latency","p50_ms":{:.1f},"p99_ms":{:.1f},"max_ms":{:.1f},"jobs":{},"rate_per_s":{:.0f},"direct_publish_p50_ms":{:.1f},"direct_publish_p99_ms":{:.1f}}})",
                   percentile_ms(relay, 0.5), percentile_ms(relay, 0.99), percentile_ms(relay, 1.0), count, rate,
                   percentile_ms(direct, 0.5), percentile_ms(direct, 0.99))
            << std::endl;
    }
    return 0;
}

/// A start-latency run: `count` jobs of `type` with x-conveyor-priority `priority`, published at `rate` a second.
struct StartLatencyRun {
    std::string name;
    std::string type;
    std::string priority;
    std::uint64_t count = 0;
    double rate = 0;
};

/// Publishes the run's jobs paced (so each meets the load as it is, not a burst of its own) and reports, from the
/// job history, how long after its publish each started: its x-conveyor-enqueued-at header (milliseconds, stamped
/// as it is sent) to the started_at of its terminal event. Also how many jobs the family's normal band still held
/// when the last one started, which says whether they ran behind a backlog.
int run_start_latency(const std::string& url_text, const StartLatencyRun& run) {
    const auto url = Url::parse(url_text);
    const auto started = Clock::now();
    publish(url, "conveyor.jobs", run.type, [](std::uint64_t) { return std::string("{}"); }, run.count, 100,
            {.per_second = run.rate, .priority = run.priority});
    conveyor::testing::Database database;
    const auto ids = fmt::format("bench-{}-%", ::getpid());
    const auto count_sql =
        "SELECT count(*) FROM conveyor.job_events WHERE job_id LIKE $1 AND state IN ('succeeded', 'dead_lettered')";
    const auto deadline = started + std::chrono::minutes(5);
    while (database.scalar(count_sql, {ids}) < static_cast<std::int64_t>(run.count) && Clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    conveyor::testing::Broker broker(url_text);
    broker.connect();
    const auto backlog = broker.counts(fmt::format("conveyor.{}", run.type.substr(0, run.type.find('.')))).messages;
    const auto figures = database.query(
        "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP "
        "(ORDER BY ms), max(ms) FROM (SELECT 1000 * extract(epoch FROM started_at - enqueued_at) AS ms "
        "FROM conveyor.job_events WHERE job_id LIKE $1 AND state IN ('succeeded', 'dead_lettered')) AS latencies",
        {ids});
    const auto& row = figures.at(0);
    if (std::stoull(row[0]) < run.count) {
        std::cerr << fmt::format("conveyor-bench: only {} of {} jobs reached the history\n", row[0], run.count);
        return 1;
    }
    std::cout
        << fmt::format(
               R"({{"name":"{}","priority":"{}","jobs":{},"rate_per_s":{:.0f},"p50_ms":{:.1f},"p99_ms":{:.1f},"max_ms":{:.1f},"normal_backlog_at_end":{}}})",
               run.name, run.priority.empty() ? "normal" : run.priority, run.count, run.rate, std::stod(row[1]),
               std::stod(row[2]), std::stod(row[3]), backlog)
        << std::endl;
    return 0;
}

std::string payload_of_size(std::size_t size) {
    std::string body = R"({"pad":")";
    body.append(size > body.size() + 2 ? size - body.size() - 2 : 0, 'x');
    body += R"("})";
    return body;
}

/// histogram_quantile over a Prometheus histogram summed across its series, as Prometheus itself computes it.
double histogram_quantile(const std::string& metrics, const std::string& name, double q) {
    std::map<double, double> buckets;
    std::istringstream lines(metrics);
    std::string line;
    const auto prefix = name + "_bucket{";
    while (std::getline(lines, line)) {
        if (!line.starts_with(prefix)) {
            continue;
        }
        const auto le_at = line.find("le=\"");
        const auto le_end = line.find('"', le_at + 4);
        const auto le_text = line.substr(le_at + 4, le_end - le_at - 4);
        const double le = le_text == "+Inf" ? INFINITY : std::stod(le_text);
        buckets[le] += std::stod(line.substr(line.rfind(' ') + 1));
    }
    if (buckets.empty() || buckets.rbegin()->second == 0) {
        return NAN;
    }
    const double rank = q * buckets.rbegin()->second;
    double lower = 0;
    double below = 0;
    for (const auto& [le, cumulative] : buckets) {
        if (cumulative >= rank) {
            if (std::isinf(le)) {
                return lower;
            }
            return lower + (le - lower) * (rank - below) / std::max(cumulative - below, 1e-12);
        }
        lower = le;
        below = cumulative;
    }
    return lower;
}

/// CPU time (user and system) the process has used so far, in microseconds.
double cpu_micros(pid_t pid) {
    std::ifstream stat(fmt::format("/proc/{}/stat", pid));
    std::string text;
    std::getline(stat, text);
    // The command name (field 2) is in parentheses and may hold spaces: count the fields after its closing one.
    std::istringstream fields(text.substr(text.rfind(')') + 2));
    std::string field;
    double ticks = 0;
    for (int index = 3; index <= 15 && fields >> field; ++index) {
        if (index == 14 || index == 15) {
            ticks += std::stod(field);  // utime, stime
        }
    }
    return ticks * 1e6 / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double total_cpu_micros(const std::vector<pid_t>& pids) {
    double total = 0;
    for (const auto pid : pids) {
        total += cpu_micros(pid);
    }
    return total;
}

double peak_rss_mb(pid_t pid) {
    std::ifstream status(fmt::format("/proc/{}/status", pid));
    std::string line;
    while (std::getline(status, line)) {
        if (line.starts_with("VmHWM:")) {
            return std::stod(line.substr(6)) / 1024.0;
        }
    }
    return NAN;
}

/// The whole saga, order to receipt: publishes `count` orders and reads the SMTP sink's mailbox until every
/// order's receipt has arrived. Latency is publish → the sink's acceptance of the receipt, per order.
int run_saga(const Url& url, std::uint64_t count, unsigned window, const std::string& mailbox,
             std::chrono::seconds timeout, double per_second) {
    std::vector<std::int64_t> sent_at;
    sent_at.reserve(count);
    const auto started = Clock::now();
    const auto started_ms = epoch_millis();
    // Paced, it measures latency at a given load rather than the queue of a burst. The sink stamps each receipt's
    // arrival, so the mailbox can be read once everything is published.
    publish(url, "conveyor.jobs", "orders.place", BodyOf(order_payload), count, window,
            {.sent_at = &sent_at, .per_second = per_second, .priority = {}});
    const auto prefix = fmt::format("Your order bench-{}-", ::getpid());
    std::vector<double> latencies_ms;
    double last_received_ms = 0;
    std::ifstream in;
    std::string pending;
    simdjson::dom::parser parser;
    const auto deadline = started + timeout;
    while (latencies_ms.size() < count && Clock::now() < deadline) {
        if (!in.is_open()) {
            in.open(mailbox);
        }
        std::string line;
        while (in.is_open() && std::getline(in, line)) {
            if (in.eof()) {  // a line still being written: read it again whole
                pending = line;
                break;
            }
            line.insert(0, pending);
            pending.clear();
            simdjson::dom::element mail;
            std::string_view subject;
            double received = 0;
            if (parser.parse(line).get(mail) != simdjson::SUCCESS ||
                mail["subject"].get(subject) != simdjson::SUCCESS ||
                mail["received_at"].get(received) != simdjson::SUCCESS || !subject.starts_with(prefix)) {
                continue;
            }
            const auto rest = subject.substr(prefix.size());
            std::uint64_t n = 0;
            std::from_chars(rest.data(), rest.data() + rest.size(), n);
            if (n < sent_at.size()) {
                latencies_ms.push_back(received * 1000 - static_cast<double>(sent_at[n]));
                last_received_ms = std::max(last_received_ms, received * 1000);
            }
        }
        if (in.is_open()) {
            in.clear();
        }
        if (latencies_ms.size() < count) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    }
    if (latencies_ms.size() < count) {
        std::cerr << fmt::format("conveyor-bench: only {} of {} receipts arrived\n", latencies_ms.size(), count);
        return 1;
    }
    std::sort(latencies_ms.begin(), latencies_ms.end());
    const auto quantile = [&](double q) {
        return latencies_ms[std::min(latencies_ms.size() - 1,
                                     static_cast<std::size_t>(q * static_cast<double>(latencies_ms.size())))];
    };
    const double seconds = (last_received_ms - static_cast<double>(started_ms)) / 1000;
    std::cout
        << fmt::format(
               R"({{"name":"{}","orders_per_s":{:.0f},"p50_ms":{:.1f},"p99_ms":{:.1f},"orders":{},"seconds":{:.2f}}})",
               per_second > 0 ? "order_saga_paced" : "order_saga_burst", static_cast<double>(count) / seconds,
               quantile(0.5), quantile(0.99), count, seconds)
        << std::endl;
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"conveyor-bench: benchmark drivers (see tests/bench/run)"};
    app.require_subcommand(1);
    std::string url_text = conveyor::testing::amqp_url();
    std::uint64_t count = 20000;
    unsigned window = 1000;
    std::size_t size = 200;
    app.add_option("--amqp-url", url_text)->envname("CONVEYOR_AMQP_URL");
    app.add_option("--count", count, "Messages");
    app.add_option("--window", window, "Unconfirmed publishes at once");
    app.add_option("--size", size, "Body size in bytes");

    auto* raw = app.add_subcommand("raw", "Raw rabbitmq-c ceiling: publisher + consumer through a quorum queue");
    unsigned prefetch = 500;
    bool direct = false;
    bool plain = false;
    raw->add_option("--prefetch", prefetch);
    raw->add_flag("--direct", direct,
                  "Publish straight to a plain quorum queue through the default exchange (the broker's cheapest "
                  "path) and report raw_direct");
    raw->add_flag("--plain", plain,
                  "Publish through a topic exchange of its own to a plain quorum queue and report raw_plain "
                  "(without: through conveyor.jobs to conveyor.diag, the path of a diag job)");

    auto* purge = app.add_subcommand("purge", "Empty a queue before a run, so leftovers cannot skew it");
    std::string purge_queue;
    purge->add_option("queue", purge_queue)->required();

    auto* e2e = app.add_subcommand("e2e", "Publish diag jobs and time a running conveyor-worker until it did them all");
    std::string name;
    std::string type = "diag.noop";
    std::string payload;
    std::vector<std::uint16_t> metrics_ports;
    std::vector<pid_t> worker_pids;
    double ceiling = 0;
    double ideal = 0;
    e2e->add_option("--name", name)->required();
    e2e->add_option("--type", type);
    e2e->add_option("--payload", payload);
    e2e->add_option("--metrics-port", metrics_ports,
                    "HTTP port of each worker (repeatable: their completions are added up; the latency figures are "
                    "the first worker's)")
        ->required();
    e2e->add_option("--worker-pid", worker_pids, "Each worker's pid, for the peak RSS (repeatable)")->required();
    e2e->add_option("--ceiling", ceiling, "raw_ceiling jobs/s, for the ratio");
    e2e->add_option("--ideal", ideal, "ideal jobs/s (e.g. concurrency / latency), for the ratio");
    bool orders = false;
    e2e->add_flag("--orders", orders, "Publish a distinct orders.place payload per job (see order_payload)");
    std::uint64_t keys = 0;
    e2e->add_option("--keys", keys,
                    "Publish {\"customer\": \"c<n mod KEYS>\"} as job n's body (with --payload's fields after it): the "
                    "key of a per-key concurrency limit");
    bool published = false;
    e2e->add_flag("--published", published,
                  "The jobs are in the queue already (conveyor-bench publish): time the worker from its first "
                  "completion to its last, without a publisher beside it");

    auto* preload = app.add_subcommand(
        "publish", "Publish jobs and exit: orders.place (order_payload) unless --type, with --payload as the body");
    std::string priority;
    preload->add_option("--type", type, "Job type")->default_str("orders.place");
    preload->add_option("--payload", payload, "Body of each job (not orders.place)");
    preload->add_option("--priority", priority, "x-conveyor-priority of each job")
        ->check(CLI::IsMember({"high", "normal", "low"}));

    auto* start_latency = app.add_subcommand(
        "start-latency", "Publish jobs of one priority, paced, and report from the job history how soon each started");
    double start_rate = 50;
    start_latency->add_option("--name", name)->required();
    start_latency->add_option("--type", type, "Job type (diag.noop)");
    start_latency->add_option("--priority", priority, "x-conveyor-priority of each job")
        ->check(CLI::IsMember({"high", "normal", "low"}));
    start_latency->add_option("--rate", start_rate, "Jobs per second")->check(CLI::PositiveNumber);

    auto* saga = app.add_subcommand(
        "saga", "Publish orders.place jobs and time each until its receipt email reaches the SMTP sink's mailbox");
    std::string mailbox;
    int saga_timeout = 600;
    saga->add_option("--mailbox", mailbox, "The SMTP sink's JSON-lines mailbox")->required();
    saga->add_option("--timeout", saga_timeout, "Seconds to wait for every receipt");
    double saga_rate = 0;
    saga->add_option("--rate", saga_rate, "Orders per second (0: all at once, a burst)");
    auto* relay = app.add_subcommand(
        "relay", "Time jobs from conveyor.enqueue() to a consumer through a running conveyor-scheduler, paced");
    double relay_rate = 50;
    relay->add_option("--rate", relay_rate, "Enqueues per second (light load)")->check(CLI::PositiveNumber);
    CLI11_PARSE(app, argc, argv);
    conveyor::setup_logging("warn");

    try {
        const auto url = Url::parse(url_text);
        if (*purge) {
            conveyor::testing::Broker broker(url_text);
            broker.connect();
            broker.purge(purge_queue);
            return 0;
        }
        if (*raw) {
            // By default the path of a Conveyor diag job: conveyor.jobs (topic) -> the family's bands (headers) ->
            // conveyor.diag, a quorum queue with a delivery limit and at-least-once dead-lettering, so the ratio
            // isolates what the consumer side costs. --plain and --direct show what that path costs the broker.
            const bool conveyor_path = !plain && !direct;
            const std::string exchange = conveyor_path ? "conveyor.jobs" : "conveyor.bench";
            const std::string queue = conveyor_path ? "conveyor.diag" : "conveyor.bench.raw";
            {
                RawConnection setup(url);
                if (conveyor_path) {
                    amqp_queue_declare(setup.get(), 1, bytes(queue), 1, 0, 0, 0, amqp_empty_table);
                    check(setup.get(), "queue.declare of conveyor.diag (run `conveyor topology declare` first)");
                } else {
                    declare_plain_path(setup.get(), exchange, queue);
                }
                amqp_queue_purge(setup.get(), 1, bytes(queue));
                check(setup.get(), "queue.purge");
            }
            const auto body = payload_of_size(size);
            const auto started = Clock::now();
            const auto cpu_at_start = cpu_micros(getpid());
            std::thread consumer([&] { consume(url, queue, count, prefetch); });
            const BodyOf same_body = [&body](std::uint64_t) { return std::string(body); };
            if (direct) {
                publish(url, "", queue, same_body, count, window);
            } else {
                publish(url, exchange, conveyor_path ? "diag.noop" : "bench.noop", same_body, count, window);
            }
            consumer.join();
            const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
            // Publisher and consumer together: the client's whole CPU per message.
            const double cpu_per_message = (cpu_micros(getpid()) - cpu_at_start) / static_cast<double>(count);
            std::cout
                << fmt::format(
                       R"({{"name":"{}","jobs_per_s":{:.0f},"client_cpu_us_per_message":{:.1f},"messages":{},"seconds":{:.2f},"body_bytes":{}}})",
                       direct ? "raw_direct" : (plain ? "raw_plain" : "raw_ceiling"),
                       static_cast<double>(count) / seconds, cpu_per_message, count, seconds, body.size())
                << std::endl;
            return 0;
        }

        if (*preload) {
            const auto body = payload.empty() ? std::string("{}") : payload;
            const auto preload_type = preload->count("--type") > 0 ? type : std::string("orders.place");
            const auto body_of = preload_type == "orders.place" ? BodyOf(order_payload)
                                                                : BodyOf([&body](std::uint64_t) { return body; });
            publish(url, "conveyor.jobs", preload_type, body_of, count, window, {.priority = priority});
            return 0;
        }
        if (*start_latency) {
            return run_start_latency(url_text, {name, type, priority, count, start_rate});
        }
        if (*relay) {
            return run_relay_latency(url, count, relay_rate);
        }
        if (*saga) {
            return run_saga(url, count, window, mailbox, std::chrono::seconds(saga_timeout), saga_rate);
        }
        const auto body = payload.empty() ? payload_of_size(size) : payload;
        // The payload's other fields (a JSON object's, such as {"ms":20}) follow the key.
        const auto fields = payload.size() > 2 ? "," + payload.substr(1) : std::string("}");
        const BodyOf keyed(
            [keys, fields](std::uint64_t n) { return fmt::format(R"({{"customer":"c{}"{})", n % keys, fields); });
        const BodyOf body_of = orders     ? BodyOf(order_payload)
                               : keys > 0 ? keyed
                                          : BodyOf([&body](std::uint64_t) { return std::string(body); });
        // Every worker's successes, and the first worker's exposition for the latency figures.
        std::string metrics;
        auto successes = [&] {
            double total = 0;
            for (const auto port : metrics_ports) {
                auto text = conveyor::testing::http_get(port, "/metrics").value_or(std::pair{0U, std::string()}).second;
                total += conveyor::testing::metric_sum(text, "conveyor_jobs_completed_total", {"outcome=\"success\""});
                if (port == metrics_ports.front()) {
                    metrics = std::move(text);
                }
            }
            return total;
        };
        const auto baseline = published ? 0.0 : successes();
        auto started = Clock::now();
        auto cpu_at_start = total_cpu_micros(worker_pids);
        std::thread publisher([&] {
            if (!published) {
                publish(url, "conveyor.jobs", type, body_of, count, window);
            }
        });
        double done_at_start = 0;
        double done = 0;
        const auto deadline = started + std::chrono::minutes(10);
        while (done < static_cast<double>(count) + baseline && Clock::now() < deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            done = successes();
            if (published && done_at_start == 0 && done > 0) {
                // The clock starts at the first completion seen; what was done by then is not counted.
                started = Clock::now();
                cpu_at_start = total_cpu_micros(worker_pids);
                done_at_start = done;
            }
        }
        const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
        const double cpu_used = total_cpu_micros(worker_pids) - cpu_at_start;
        publisher.join();
        if (done < static_cast<double>(count) + baseline) {
            std::cerr << fmt::format("conveyor-bench: only {} of {} jobs completed\n", done - baseline, count);
            return 1;
        }
        const double rate = (static_cast<double>(count) - done_at_start) / seconds;
        std::string ratios;
        if (ceiling > 0) {
            ratios += fmt::format(R"(,"ratio_to_ceiling":{:.3f})", rate / ceiling);
        }
        if (ideal > 0) {
            const double capped = ceiling > 0 ? std::min(ideal, ceiling) : ideal;
            ratios += fmt::format(R"(,"ideal_jobs_per_s":{:.0f},"ratio_to_ideal":{:.3f})", capped, rate / capped);
        }
        double rss_mb = 0;
        for (const auto pid : worker_pids) {
            rss_mb = std::max(rss_mb, peak_rss_mb(pid));
        }
        // Transactional jobs: how many the first worker's group commits carried each.
        const auto groups = conveyor::testing::metric_sum(metrics, "conveyor_group_commit_jobs_count");
        if (groups > 0) {
            ratios += fmt::format(R"(,"jobs_per_group":{:.1f})",
                                  conveyor::testing::metric_sum(metrics, "conveyor_group_commit_jobs_sum") / groups);
        }
        std::cout
            << fmt::format(
                   R"({{"name":"{}","workers":{},"jobs_per_s":{:.0f}{},"worker_cpu_us_per_job":{:.1f},"jobs":{},"seconds":{:.2f},"queue_wait_p50_ms":{:.1f},"queue_wait_p99_ms":{:.1f},"duration_p50_ms":{:.1f},"duration_p99_ms":{:.1f},"rss_mb":{:.1f}}})",
                   name, metrics_ports.size(), rate, ratios, cpu_used / (static_cast<double>(count) - done_at_start),
                   count, seconds, 1000 * histogram_quantile(metrics, "conveyor_job_queue_wait_seconds", 0.5),
                   1000 * histogram_quantile(metrics, "conveyor_job_queue_wait_seconds", 0.99),
                   1000 * histogram_quantile(metrics, "conveyor_job_duration_seconds", 0.5),
                   1000 * histogram_quantile(metrics, "conveyor_job_duration_seconds", 0.99), rss_mb)
            << std::endl;
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "conveyor-bench: " << e.what() << '\n';
        return 1;
    }
}
