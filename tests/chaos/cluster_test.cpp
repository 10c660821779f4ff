#include <sys/types.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include "local_servers.hpp"
#include "orders.hpp"
#include "scheduler_fixture.hpp"

/// Failovers of the local cluster (`deploy/local/services start --cluster`: three RabbitMQ nodes and a PostgreSQL
/// primary with its synchronous standby) under load. Three workers run diag.ledger jobs and order sagas that an
/// independent client publishes at a steady pace (each ledger job emits one more through the outbox; each order is
/// reserved, charged at deploy/local's payment gateway, confirmed, mailed to its SMTP sink and projected), and two
/// schedulers fire a ledger job every second. After the fault: every job's effect applied exactly once, every order
/// charged once and mailed, nothing dead-lettered, every fire time enqueued once, and the time until throughput
/// recovered printed. One more fault needs a cluster of its own (tests/chaos/partition_cluster): a node cut off from
/// the other two. Run with the CONVEYOR_* URLs of the cluster.
namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr int kPacePerSecond = 150;
constexpr int kOrdersPerSecond = 5;
constexpr std::int64_t kStock = 1'000'000;
constexpr const char* kProduct = "sku-cluster";
constexpr int kJobMs = 5;
constexpr auto kBeforeFault = 10s;
constexpr auto kAfterFault = 15s;
constexpr auto kSettleBound = 240s;
constexpr int kRabbitNodes = 3;
constexpr std::uint16_t kFirstManagementPort = 15681;
constexpr std::uint16_t kFirstAmqpPort = 5681;
constexpr std::uint16_t kFirstPostgresPort = 5441;

std::filesystem::path cluster_dir() {
    return state_dir() / "cluster";
}

pid_t pid_in(const std::filesystem::path& pid_file) {
    std::ifstream in(pid_file);
    pid_t pid = 0;
    in >> pid;
    return pid;
}

pid_t rabbit_pid(int node) {
    return pid_in(cluster_dir() / fmt::format("rabbit{}/rabbitmq.pid", node));
}

pid_t postgres_pid(int server) {
    return pid_in(cluster_dir() / fmt::format("pg{}/data/postmaster.pid", server));
}

/// Which PostgreSQL server (1 or 2) is the primary: the one that is not a standby.
int primary_server() {
    return std::filesystem::exists(cluster_dir() / "pg1/data/standby.signal") ? 2 : 1;
}

std::pair<int, std::string> services(std::vector<std::string> args) {
    args.insert(args.begin(), (source_dir() / "deploy/local/services").string());
    return run_command(args, 300s);
}

/// The RabbitMQ nodes a test runs against, node 1 first: how clients and the management API reach each.
struct RabbitNodes {
    std::vector<std::string> amqp;        ///< host:port
    std::vector<std::string> management;  ///< http://host:port

    /// The nodes' AMQP URL with `node`'s host listed first: clients connect there first.
    [[nodiscard]] std::string url_preferring(int node) const {
        auto hosts = amqp;
        std::rotate(hosts.begin(), hosts.begin() + node - 1, hosts.end());
        return fmt::format("amqp://guest:guest@{}/%2f", fmt::join(hosts, ","));
    }

    /// GET path from one node's management API, if it answers.
    static std::optional<std::string> fetch(const std::string& api, const std::string& path) {
        auto [status, body] = run_command({"/usr/bin/curl", "-sf", "-m", "3", "-u", "guest:guest", api + path}, 10s);
        return status == 0 ? std::optional(std::move(body)) : std::nullopt;
    }

    /// GET path from the management API of the first node that answers, or "" if none does.
    [[nodiscard]] std::string get(const std::string& path) const {
        for (const auto& api : management) {
            if (auto body = fetch(api, path)) {
                return *body;
            }
        }
        return {};
    }

    /// A queue as the management API describes it (JSON), or "" if no node answers.
    [[nodiscard]] std::string queue_info(const std::string& queue) const { return get("/api/queues/%2f/" + queue); }

    /// The node number (1-3) that leads a quorum queue, or 0 if no node says.
    [[nodiscard]] int leader_of(const std::string& queue) const {
        static const std::regex leader(R"("leader":"rabbit(\d)@)");
        std::smatch match;
        const auto info = queue_info(queue);
        return std::regex_search(info, match, leader) ? std::stoi(match[1]) : 0;
    }

    /// Whether a node of the cluster has recorded a network partition.
    [[nodiscard]] bool partitioned() const {
        static const std::regex partition(R"("partitions":\["rabbit)");
        return std::regex_search(get("/api/nodes"), partition);
    }

    /// Whether every node's management API answers and lists every node running.
    [[nodiscard]] bool all_running() const {
        static const std::regex running(R"("running":true)");
        return std::all_of(management.begin(), management.end(), [this](const std::string& api) {
            const auto body = fetch(api, "/api/nodes");
            return body && std::distance(std::sregex_iterator(body->begin(), body->end(), running),
                                         std::sregex_iterator()) == static_cast<std::ptrdiff_t>(management.size());
        });
    }

    /// A queue's leader, online members, consumers and messages, as JSON members ("" if no node answers).
    [[nodiscard]] std::string queue_summary(const std::string& queue) const {
        static const std::regex field(
            R"re("(leader|online|consumers|messages_ready|messages_unacknowledged)":("[^"]*"|\[[^\]]*\]|\d+))re");
        const auto info = queue_info(queue);
        std::vector<std::string> fields;
        for (auto it = std::sregex_iterator(info.begin(), info.end(), field); it != std::sregex_iterator(); ++it) {
            fields.push_back(it->str());
        }
        return fmt::format("{}", fmt::join(fields, ","));
    }

    /// How many of a quorum queue's members are online.
    [[nodiscard]] std::size_t online_members(const std::string& queue) const {
        static const std::regex online(R"("online":\[([^\]]*)\])");
        std::smatch match;
        const auto info = queue_info(queue);
        if (!std::regex_search(info, match, online)) {
            return 0;
        }
        const std::string members = match[1];
        return members.empty() ? 0 : static_cast<std::size_t>(std::count(members.begin(), members.end(), ',') + 1);
    }
};

/// deploy/local/services' cluster: the nodes on 127.0.0.1, ports 5681-5683 and 15681-15683.
RabbitNodes local_cluster() {
    RabbitNodes nodes;
    for (int node = 1; node <= kRabbitNodes; ++node) {
        nodes.amqp.push_back(fmt::format("127.0.0.1:{}", kFirstAmqpPort + node - 1));
        nodes.management.push_back(fmt::format("http://127.0.0.1:{}", kFirstManagementPort + node - 1));
    }
    return nodes;
}

/// tests/chaos/partition_cluster: three RabbitMQ nodes of its own, each in a network namespace, for as long as this
/// lives. Clients reach node N at 10.77.0.1N; the nodes reach each other on a second link that `cut` takes down.
class PartitionCluster {
  public:
    PartitionCluster() {
        command("down");  // whatever an interrupted run left
        std::tie(status_, output_) = command("up");
    }
    ~PartitionCluster() { command("down"); }
    PartitionCluster(const PartitionCluster&) = delete;
    PartitionCluster& operator=(const PartitionCluster&) = delete;

    [[nodiscard]] bool up() const { return status_ == 0; }
    [[nodiscard]] const std::string& output() const { return output_; }

    static RabbitNodes nodes() {
        RabbitNodes nodes;
        for (int node = 1; node <= kRabbitNodes; ++node) {
            nodes.amqp.push_back(fmt::format("10.77.0.1{}:5672", node));
            nodes.management.push_back(fmt::format("http://10.77.0.1{}:15672", node));
        }
        return nodes;
    }

    static void cut(int node) { expect_success(command("cut", node)); }
    static void heal(int node) { expect_success(command("heal", node)); }
    static void restart(int node) { expect_success(command("restart", node)); }

  private:
    static std::pair<int, std::string> command(const std::string& verb, std::optional<int> node = std::nullopt) {
        std::vector<std::string> args{(source_dir() / "tests/chaos/partition_cluster").string(), verb};
        if (node) {
            args.push_back(std::to_string(*node));
        }
        return run_command(args, 300s);
    }
    static void expect_success(const std::pair<int, std::string>& result) {
        EXPECT_EQ(result.first, 0) << result.second;
    }

    int status_ = -1;
    std::string output_;
};

/// The ledger's row count every 100 ms, read on a connection of its own: the workload's throughput over time.
class LedgerSampler {
  public:
    LedgerSampler() : thread_([this] { run(); }) {}
    ~LedgerSampler() {
        stop_ = true;
        thread_.join();
    }
    LedgerSampler(const LedgerSampler&) = delete;
    LedgerSampler& operator=(const LedgerSampler&) = delete;

    struct Recovery {
        std::int64_t recovered_ms = 0;      ///< from the fault until the last stalled second ended
        std::int64_t stalled_ms = 0;        ///< in stalled seconds, all told
        std::int64_t longest_pause_ms = 0;  ///< the longest time the ledger did not grow at all
    };

    /// From `fault` on (until `end`), each 1 s window whose growth fell below half the pace counts as stalled; the
    /// workload recovered when the last stalled window ended.
    [[nodiscard]] Recovery recovery(Clock::time_point fault, Clock::time_point end) const {
        const std::lock_guard lock(mutex_);
        Recovery recovery{.longest_pause_ms = longest_pause(fault, end)};
        auto& [recovered_ms, stalled_ms, longest_pause_ms] = recovery;
        for (std::size_t i = 0; i < samples_.size(); ++i) {
            const auto [start, rows] = samples_[i];
            if (start < fault || start + 1s > end) {
                continue;
            }
            auto j = i + 1;
            while (j < samples_.size() && samples_[j].first < start + 1s) {
                ++j;
            }
            if (j == samples_.size()) {
                break;
            }
            const auto seconds = std::chrono::duration<double>(samples_[j].first - start).count();
            if (static_cast<double>(samples_[j].second - rows) < kPacePerSecond / 2.0 * seconds) {
                stalled_ms +=
                    std::chrono::duration_cast<std::chrono::milliseconds>(samples_[i + 1].first - start).count();
                recovered_ms = std::chrono::duration_cast<std::chrono::milliseconds>(samples_[j].first - fault).count();
            }
        }
        return recovery;
    }

  private:
    [[nodiscard]] std::int64_t longest_pause(Clock::time_point fault, Clock::time_point end) const {
        std::int64_t longest = 0;
        std::optional<std::pair<Clock::time_point, std::int64_t>> last_growth;
        for (const auto& [at, rows] : samples_) {
            if (at < fault || at > end) {
                continue;
            }
            if (!last_growth || rows > last_growth->second) {
                last_growth = {at, rows};
                continue;
            }
            longest = std::max<std::int64_t>(
                longest, std::chrono::duration_cast<std::chrono::milliseconds>(at - last_growth->first).count());
        }
        return longest;
    }

    void run() {
        Database database;
        std::int64_t rows = 0;
        while (!stop_) {
            try {
                rows = database.scalar("SELECT count(*) FROM conveyor.diag_ledger");
            } catch (const std::exception&) {
                // The database is failing over: nothing seen to grow meanwhile.
            }
            {
                const std::lock_guard lock(mutex_);
                samples_.emplace_back(Clock::now(), rows);
            }
            std::this_thread::sleep_for(100ms);
        }
    }

    std::atomic<bool> stop_{false};
    mutable std::mutex mutex_;
    std::vector<std::pair<Clock::time_point, std::int64_t>> samples_;
    std::thread thread_;
};

/// An independent client publishing ledger jobs at a steady pace until stopped, riding out failovers on its own
/// connection.
class PacedPublisher {
  public:
    explicit PacedPublisher(std::string url) : url_(std::move(url)), thread_([this] { run(); }) {}
    ~PacedPublisher() { stop(); }
    PacedPublisher(const PacedPublisher&) = delete;
    PacedPublisher& operator=(const PacedPublisher&) = delete;

    /// Publishes what is due by now, then stops.
    void stop() {
        stop_ = true;
        if (thread_.joinable()) {
            thread_.join();
        }
    }
    [[nodiscard]] int published() const { return published_; }
    [[nodiscard]] int orders() const { return orders_; }
    [[nodiscard]] const std::string& failure() const { return failure_; }

  private:
    void run() {
        try {
            Broker broker(url_, BrokerOptions{.max_connect_attempts = 0, .heartbeat = 5s});
            broker.connect();
            const auto started = Clock::now();
            for (bool last = false; !last;) {
                last = stop_;
                const auto elapsed = std::chrono::duration<double>(Clock::now() - started).count();
                const int due = static_cast<int>(elapsed * kPacePerSecond) + 1;
                const int orders_due = static_cast<int>(elapsed * kOrdersPerSecond) + 1;
                std::vector<amqp::Message> jobs;
                for (int i = published_; i < due; ++i) {
                    jobs.push_back(Broker::job("diag.ledger", fmt::format(R"({{"ms": {}, "emit": 1}})", kJobMs),
                                               fmt::format("paced-{}", i)));
                }
                for (int i = orders_; i < orders_due; ++i) {
                    const auto order = fmt::format("order-{}", i);
                    jobs.push_back(
                        Broker::job("orders.place",
                                    order_payload(order, fmt::format("customer-{}", i % 20), {{kProduct, 1}}), order));
                }
                broker.publish_all(std::move(jobs));
                published_ = due;
                orders_ = orders_due;
                std::this_thread::sleep_for(100ms);
            }
        } catch (const std::exception& e) {
            failure_ = e.what();
        }
    }

    std::string url_;
    std::atomic<bool> stop_{false};
    std::atomic<int> published_{0};
    std::atomic<int> orders_{0};
    std::string failure_;
    std::thread thread_;
};

/// A fault: put in place, held, healed (either step may be empty).
struct Fault {
    std::string name;
    /// The node every client connects to first and that leads the busy queues (the diag family's).
    int busy_node = 1;
    std::function<void()> inject;
    std::chrono::seconds hold{0};
    std::function<void()> heal;
    /// A database fault may cut the commit that marks a sent receipt (see check_orders).
    bool receipts_may_repeat = false;
};

class ClusterTest : public SchedulerFixture {
  protected:
    void SetUp() override {
        for (int node = 1; node <= kRabbitNodes; ++node) {
            ASSERT_GT(rabbit_pid(node), 0) << "the local cluster is not running: deploy/local/services start --cluster";
        }
        SchedulerFixture::SetUp();
        database_.query("TRUNCATE conveyor.schedules, conveyor.scheduled_jobs RESTART IDENTITY CASCADE");
        reset_shop();
        database_.query("INSERT INTO shop.products (id, name, price_cents) VALUES ($1, $1, 1000)", {kProduct});
        database_.query("INSERT INTO inventory.stock (product_id, available) VALUES ($1, $2)",
                        {kProduct, std::to_string(kStock)});
        run_cli({"topology", "declare"});
        for (const auto* family : {"orders", "inventory", "payments", "emails", "projections"}) {
            broker_.purge(topology::queue_name(family));
            broker_.purge(topology::dead_letter_queue_name(family));
        }
        for (unsigned level = 0; level < topology::kDelayLevels; ++level) {
            broker_.purge(topology::delay_level_name(level));
        }
    }

    /// Runs the workload through `fault` and checks that nothing was lost, applied twice or dead-lettered.
    void run_through(const Fault& fault) {
        const auto url = nodes_.url_preferring(fault.busy_node);
        lead_busy_queues_from(fault.busy_node);
        if (HasFatalFailure()) {
            return;
        }
        const PaymentGatewayServer gateway;
        const SmtpSink mail;
        auto workers = start_workers(fault.name, url, gateway, mail);
        auto schedulers = start_schedulers(fault.name, url);
        LedgerSampler sampler;
        PacedPublisher publisher(url);
        std::this_thread::sleep_for(kBeforeFault);
        const auto fault_start = Clock::now();
        if (fault.inject) {
            fault.inject();
        }
        std::this_thread::sleep_for(fault.hold);
        if (fault.heal) {
            fault.heal();
        }
        std::this_thread::sleep_for(kAfterFault);
        publisher.stop();
        const auto published_all = Clock::now();
        ASSERT_TRUE(publisher.failure().empty()) << publisher.failure();
        for (auto& scheduler : schedulers) {
            stop(scheduler);
        }
        const auto recovery = sampler.recovery(fault_start, published_all);
        check_ledger_and_fires(fault.name, publisher.published());
        check_orders(fault, publisher.orders(), gateway, mail);
        check_nothing_dead_lettered(url);
        std::printf(
            "{\"name\":\"%s\",\"published\":%d,\"orders\":%d,\"recovered_ms\":%lld,\"stalled_ms\":%lld,"
            "\"longest_pause_ms\":%lld}\n",
            fault.name.c_str(), publisher.published(), publisher.orders(),
            static_cast<long long>(recovery.recovered_ms), static_cast<long long>(recovery.stalled_ms),
            static_cast<long long>(recovery.longest_pause_ms));
        std::fflush(stdout);
        for (auto& worker : workers) {
            worker.process->signal(SIGTERM);
        }
        for (auto& worker : workers) {
            EXPECT_TRUE(worker.process->wait(30s).has_value()) << worker.process->log();
        }
    }

    std::vector<WorkerUnderTest> start_workers(const std::string& name, const std::string& url,
                                               const PaymentGatewayServer& gateway, const SmtpSink& mail) {
        std::vector<WorkerUnderTest> workers;
        workers.reserve(3);
        for (int i = 0; i < 3; ++i) {
            workers.push_back(start_worker({"--concurrency", "10", "--amqp-heartbeat", "5s", "--amqp-url", url,
                                            "--queues", "diag,orders,inventory,payments,emails,projections",
                                            "--payment-gateway-url", gateway.url(), "--smtp-url", mail.url()},
                                           fmt::format("{}-worker-{}", name, i)));
        }
        return workers;
    }

    std::vector<SchedulerUnderTest> start_schedulers(const std::string& name, const std::string& url) {
        const auto schedules = write_file(name + "-schedules", R"(schedules:
  - name: every-second
    cron: "* * * * * *"
    type: diag.ledger
    payload: {}
    misfire: catch_up
    max_catch_up: 1000
)");
        std::vector<SchedulerUnderTest> schedulers;
        schedulers.reserve(2);
        for (int i = 0; i < 2; ++i) {
            schedulers.push_back(
                start_scheduler({"--schedules", schedules.string(), "--amqp-heartbeat", "5s", "--amqp-url", url},
                                fmt::format("{}-scheduler-{}", name, i)));
        }
        return schedulers;
    }

    /// Every order confirmed and projected, charged once at the gateway, its stock taken once and its receipt
    /// mailed. A database failover may cut the commit that marks a sent receipt: the retry sends it again, with the
    /// same Message-ID (the emails job's documented window), so there only distinct receipts are counted.
    void check_orders(const Fault& fault, int orders, const PaymentGatewayServer& gateway, const SmtpSink& mail) {
        const auto confirmed = [&] {
            return database_.scalar("SELECT count(*) FROM shop.orders WHERE status = 'confirmed'");
        };
        const auto projected = [&] {
            return database_.scalar(
                "SELECT count(*) FROM shop.orders o JOIN shop.projection_checkpoints c "
                "ON c.aggregate_id = o.id AND c.version = o.version");
        };
        const std::int64_t projections = 3 * static_cast<std::int64_t>(orders);  // one per read model
        EXPECT_TRUE(eventually([&] { return confirmed() == orders && projected() == projections; }, kSettleBound))
            << confirmed() << " of " << orders << " orders confirmed, " << projected() << " of " << projections
            << " projections caught up";
        EXPECT_TRUE(eventually([&] { return mail.count("order_confirmed") >= static_cast<std::size_t>(orders); }, 60s));
        std::set<std::string> receipts;
        std::size_t sent = 0;
        for (const auto& receipt : mail.mails()) {
            if (receipt.template_name == "order_confirmed") {
                receipts.insert(receipt.message_id);
                ++sent;
            }
        }
        const auto resent = sent - receipts.size();
        std::printf("{\"name\":\"%s_orders\",\"orders\":%d,\"charges\":%lld,\"receipts\":%zu,\"resent\":%zu}\n",
                    fault.name.c_str(), orders, static_cast<long long>(gateway.stat("/charges")), receipts.size(),
                    resent);
        EXPECT_EQ(gateway.stat("/charges"), orders);
        EXPECT_EQ(database_.scalar("SELECT count(*) FROM shop.payments WHERE status = 'captured'"), orders);
        EXPECT_EQ(database_.scalar("SELECT available FROM inventory.stock WHERE product_id = $1", {kProduct}),
                  kStock - orders);
        EXPECT_EQ(receipts.size(), static_cast<std::size_t>(orders));
        if (!fault.receipts_may_repeat) {
            EXPECT_EQ(resent, 0U);
        }
    }

    /// No dead letter in any family the workload uses.
    static void check_nothing_dead_lettered(const std::string& url) {
        Broker broker(url, BrokerOptions{.max_connect_attempts = 0});
        broker.connect();
        for (const auto* family : {"diag", "orders", "inventory", "payments", "emails", "projections"}) {
            EXPECT_EQ(broker.ready(topology::dead_letter_queue_name(family)), 0U) << family;
        }
    }

    /// Every ledger job's effect applied once, and every fire time enqueued once and applied.
    void check_ledger_and_fires(const std::string& name, int published) {
        const auto fires = database_.query(
            "SELECT extract(epoch FROM run_at)::bigint, count(*) FROM conveyor.scheduled_jobs "
            "WHERE source = 'schedule:every-second' GROUP BY run_at ORDER BY run_at");
        ASSERT_GE(fires.size(), 10U);
        const auto fire_span = std::stoll(fires.back()[0]) - std::stoll(fires.front()[0]) + 1;
        EXPECT_EQ(static_cast<std::int64_t>(fires.size()), fire_span) << "a fire time is missing";
        for (const auto& fire : fires) {
            EXPECT_EQ(fire[1], "1") << "fire time " << fire[0] << " enqueued more than once";
        }
        const auto fired = database_.scalar(
            "SELECT count(*) FROM conveyor.scheduled_jobs WHERE source = 'schedule:every-second' "
            "AND state = 'published'");
        // Each paced job and the job it emits, and each published fire.
        const auto expected = 2 * static_cast<std::int64_t>(published) + fired;
        const auto rows = [&] { return database_.scalar("SELECT count(*) FROM conveyor.diag_ledger"); };
        EXPECT_TRUE(eventually([&] { return rows() >= expected; }, kSettleBound))
            << rows() << " of " << expected << " effects applied within the bound";
        std::this_thread::sleep_for(2s);  // late duplicates would show now
        const auto applied_once = database_.scalar("SELECT count(*) FROM conveyor.diag_ledger WHERE applied = 1");
        const auto duplicates =
            database_.scalar("SELECT coalesce(sum(applied - 1), 0) FROM conveyor.diag_ledger WHERE applied > 1");
        const auto fires_applied = database_.scalar(
            "SELECT count(*) FROM conveyor.scheduled_jobs s JOIN conveyor.diag_ledger l ON l.job_id = s.id::text "
            "WHERE s.source = 'schedule:every-second' AND s.state = 'published'");
        std::printf(
            "{\"name\":\"%s_ledger\",\"published\":%d,\"fires\":%lld,\"effects\":%lld,"
            "\"applied_once\":%lld,\"duplicate_effects\":%lld}\n",
            name.c_str(), published, static_cast<long long>(fired), static_cast<long long>(expected),
            static_cast<long long>(applied_once), static_cast<long long>(duplicates));
        EXPECT_EQ(applied_once, expected);
        EXPECT_EQ(rows(), expected) << "effects of jobs nobody published";
        EXPECT_EQ(duplicates, 0);
        EXPECT_EQ(fires_applied, fired);
    }

    /// A quorum queue's leader is the node its declaring client is connected to (RabbitMQ 3.10's default): the diag
    /// family's queues are declared anew from `node`, so that it leads them.
    void lead_busy_queues_from(int node) {
        for (const auto* queue : {"conveyor.diag", "conveyor.diag.high", "conveyor.diag.low", "conveyor.diag.dlq"}) {
            const auto [status, output] =
                run_command({"/usr/bin/curl", "-sS", "-m", "10", "-u", "guest:guest", "-X", "DELETE",
                             fmt::format("{}/api/queues/%2f/{}", nodes_.management.front(), queue)},
                            20s);
            ASSERT_EQ(status, 0) << output;
        }
        const auto [status, output] =
            run_command({(binary_dir() / "conveyor").string(), "--amqp-url", nodes_.url_preferring(node), "topology",
                         "declare", "--families", "diag"},
                        60s);
        ASSERT_EQ(status, 0) << output;
        ASSERT_EQ(nodes_.leader_of("conveyor.diag"), node) << nodes_.queue_info("conveyor.diag");
    }

    static void expect_services(const std::vector<std::string>& args) {
        const auto [status, output] = services(args);
        EXPECT_EQ(status, 0) << output;
    }

    /// Waits until every member of the busy queue is back online, so the next fault meets a whole cluster.
    void expect_all_members_online() const {
        EXPECT_TRUE(eventually([this] { return nodes_.online_members("conveyor.diag") == kRabbitNodes; }, 120s))
            << nodes_.queue_info("conveyor.diag");
    }

    RabbitNodes nodes_ = local_cluster();
};

TEST_F(ClusterTest, KillingTheNodeThatLeadsTheBusyQueuesLosesAndDuplicatesNothing) {
    static constexpr int kVictim = 1;
    run_through({"cluster_kill_queue_leader", kVictim,
                 [this] {
                     ASSERT_EQ(nodes_.leader_of("conveyor.diag"), kVictim) << nodes_.queue_info("conveyor.diag");
                     ASSERT_EQ(::kill(rabbit_pid(kVictim), SIGKILL), 0);
                 },
                 20s,
                 [] {
                     expect_services({"start", "--cluster", fmt::format("rabbit{}", kVictim)});
                 }});
    expect_all_members_online();
}

TEST_F(ClusterTest, ARollingRestartOfEveryNodeLosesAndDuplicatesNothing) {
    run_through({"cluster_rolling_restart",
                 1,
                 [this] {
                     for (int node = 1; node <= kRabbitNodes; ++node) {
                         expect_services({"stop", "--cluster", fmt::format("rabbit{}", node)});
                         std::this_thread::sleep_for(3s);
                         expect_services({"start", "--cluster", fmt::format("rabbit{}", node)});
                         expect_all_members_online();
                     }
                 },
                 0s,
                 {}});
}

TEST_F(ClusterTest, FreezingANodeForAMinuteLosesAndDuplicatesNothing) {
    static constexpr int kVictim = 2;
    pid_t frozen = 0;
    run_through({"cluster_freeze_node", kVictim,
                 [&] {
                     ASSERT_EQ(nodes_.leader_of("conveyor.diag"), kVictim) << nodes_.queue_info("conveyor.diag");
                     frozen = rabbit_pid(kVictim);
                     ASSERT_EQ(::kill(frozen, SIGSTOP), 0);
                 },
                 60s,
                 [&] {
                     if (frozen == 0) {
                         return;
                     }
                     ::kill(frozen, SIGCONT);
                     // The thawed node never saw itself in a minority (it was frozen, not cut off), so pause_minority
                     // does not pause it; the others saw it go and come back, and record a partition that stays.
                     // The partitions guide's recovery: restart the nodes of the partition trusted least.
                     const auto partitioned = [this] { return nodes_.partitioned(); };
                     if (eventually(partitioned, 30s)) {
                         std::printf("{\"name\":\"cluster_freeze_node_partition\",\"healed_by\":\"restart\"}\n");
                         expect_services({"restart", "--cluster", fmt::format("rabbit{}", kVictim)});
                         EXPECT_TRUE(eventually([&] { return !partitioned(); }, 60s)) << "the partition stayed";
                     }
                 }});
    expect_all_members_online();
}

TEST_F(ClusterTest, KillingThePostgresqlPrimaryAndPromotingTheStandbyLosesAndDuplicatesNothing) {
    run_through({"cluster_postgresql_failover", 3,
                 [] {
                     const auto primary = primary_server();
                     ASSERT_EQ(::kill(postgres_pid(primary), SIGKILL), 0);
                     expect_services({"pg-promote"});
                 },
                 10s, [] { expect_services({"pg-rejoin"}); }, true});
}

/// The Jepsen case: the node leading the busy queues loses its peers but not its clients. pause_minority makes it pause
/// (closing its clients' connections, which move to the majority, where the queues elect new leaders). Healed, it
/// should resume and rejoin by itself; RabbitMQ 3.10.8 on Erlang 25 (Debian 12's) can hang in that restart
/// (rabbitmq-server#6034, its "global hang workaround" broken by OTP 25.1), and then the partitions guide's
/// recovery, restarting the node, is applied and reported.
TEST_F(ClusterTest, CuttingANodeOffFromTheOtherTwoForAMinuteLosesAndDuplicatesNothing) {
    static constexpr int kVictim = 1;
    const PartitionCluster partition;
    ASSERT_TRUE(partition.up()) << partition.output();
    nodes_ = PartitionCluster::nodes();
    run_through({"cluster_network_partition", kVictim,
                 [this] {
                     ASSERT_EQ(nodes_.leader_of("conveyor.diag"), kVictim) << nodes_.queue_info("conveyor.diag");
                     PartitionCluster::cut(kVictim);
                 },
                 60s,
                 [this] {
                     // How the busy queue stood at the end of the cut, for a run whose throughput did not recover.
                     std::printf("{\"name\":\"cluster_network_partition_cut\",\"conveyor.diag\":{%s}}\n",
                                 nodes_.queue_summary("conveyor.diag").c_str());
                     PartitionCluster::heal(kVictim);
                     if (!eventually([this] { return nodes_.all_running(); }, 60s)) {
                         std::printf("{\"name\":\"cluster_network_partition_rejoin\",\"healed_by\":\"restart\"}\n");
                         PartitionCluster::restart(kVictim);
                     }
                 }});
    expect_all_members_online();
    EXPECT_FALSE(nodes_.partitioned()) << nodes_.get("/api/nodes");
}

/// CONVEYOR_PG_READ_URL: a scheduler whose reads may only go to the standby serves the job history from there, and
/// its read pool never touches the primary.
TEST_F(ClusterTest, TheSchedulerServesTheJobHistoryFromTheStandby) {
    const auto standby_port = kFirstPostgresPort + (primary_server() == 1 ? 1 : 0);
    const auto standby_url =
        fmt::format("postgresql://postgres@127.0.0.1:{}/conveyor?target_session_attrs=standby", standby_port);
    auto worker = start_worker({"--amqp-url", nodes_.url_preferring(1), "--queues", "diag"}, "standby-reads-worker");
    Broker broker(nodes_.url_preferring(1));
    broker.connect();
    broker.publish(Broker::job("diag.noop", "{}", "read-on-the-standby"));
    const auto tokens = write_file("standby-reads-tokens", fmt::format(R"(tokens:
  - name: ops
    sha256: {}
    scopes: [admin]
)",
                                                                       sha256("admin-secret")));
    auto scheduler = start_scheduler({"--pg-read-url", standby_url, "--api-tokens-file", tokens.string()},
                                     "standby-reads-scheduler");
    EXPECT_TRUE(eventually(
        [&] { return call_api(scheduler.port, "GET", "/v1/jobs/read-on-the-standby", "admin-secret").status == 200; },
        30s));
    static constexpr const char* kReadPool =
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'conveyor-scheduler % reads'";
    Database standby(standby_url);
    EXPECT_GE(standby.scalar(kReadPool), 1);
    EXPECT_EQ(database_.scalar(kReadPool), 0);
    stop(scheduler);
}

}  // namespace
}  // namespace conveyor::testing
