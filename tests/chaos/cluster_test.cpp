#include <sys/types.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <regex>
#include <thread>

#include "scheduler_fixture.hpp"

/// Failovers of the local cluster (`deploy/local/services start --cluster`: three RabbitMQ nodes and a PostgreSQL
/// primary with its synchronous standby) under load. Three workers run diag.ledger jobs that an independent client
/// publishes at a steady pace (each emits one more ledger job through the outbox), and two schedulers fire a ledger
/// job every second. After the fault: every job's effect applied exactly once, nothing dead-lettered, every fire time
/// enqueued once, and the time until throughput recovered printed. Run with the CONVEYOR_* URLs of the cluster.
namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr int kPacePerSecond = 150;
constexpr int kJobMs = 5;
constexpr auto kBeforeFault = 10s;
constexpr auto kAfterFault = 15s;
constexpr auto kSettleBound = 240s;
constexpr int kRabbitNodes = 3;
constexpr std::uint16_t kFirstManagementPort = 15681;
constexpr std::uint16_t kFirstAmqpPort = 5681;

std::filesystem::path cluster_dir() {
    const char* state = std::getenv("CONVEYOR_STATE_DIR");
    return (state != nullptr ? std::filesystem::path(state) : source_dir() / ".state") / "cluster";
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

/// A queue as the management API of the first node that answers describes it (JSON), or "" if none does.
std::string queue_info(const std::string& queue) {
    for (int node = 1; node <= kRabbitNodes; ++node) {
        auto [status, body] =
            run_command({"/usr/bin/curl", "-sf", "-m", "3", "-u", "guest:guest",
                         fmt::format("http://127.0.0.1:{}/api/queues/%2f/{}", kFirstManagementPort + node - 1, queue)},
                        10s);
        if (status == 0) {
            return body;
        }
    }
    return {};
}

/// The node number (1-3) that leads a quorum queue, or 0 if no node says.
int leader_of(const std::string& queue) {
    static const std::regex leader(R"("leader":"rabbit(\d)@)");
    std::smatch match;
    const auto info = queue_info(queue);
    return std::regex_search(info, match, leader) ? std::stoi(match[1]) : 0;
}

/// Whether a node of the cluster has recorded a network partition.
bool partitioned() {
    static const std::regex partition(R"("partitions":\["rabbit)");
    for (int node = 1; node <= kRabbitNodes; ++node) {
        auto [status, body] =
            run_command({"/usr/bin/curl", "-sf", "-m", "3", "-u", "guest:guest",
                         fmt::format("http://127.0.0.1:{}/api/nodes", kFirstManagementPort + node - 1)},
                        10s);
        if (status == 0) {
            return std::regex_search(body, partition);
        }
    }
    return false;
}

/// How many of a quorum queue's members are online.
std::size_t online_members(const std::string& queue) {
    static const std::regex online(R"("online":\[([^\]]*)\])");
    std::smatch match;
    const auto info = queue_info(queue);
    if (!std::regex_search(info, match, online)) {
        return 0;
    }
    const std::string members = match[1];
    return members.empty() ? 0 : static_cast<std::size_t>(std::count(members.begin(), members.end(), ',') + 1);
}

/// The cluster's AMQP URL (CONVEYOR_AMQP_URL) with `node`'s host listed first: clients connect there first.
std::string url_preferring(int node) {
    const auto url = amqp_url();
    const auto at = url.rfind('@');
    const auto slash = url.find('/', at);
    std::vector<std::string> hosts;
    std::string rest = url.substr(at + 1, slash - at - 1);
    for (std::size_t comma; (comma = rest.find(',')) != std::string::npos; rest.erase(0, comma + 1)) {
        hosts.push_back(rest.substr(0, comma));
    }
    hosts.push_back(rest);
    const auto preferred = fmt::format("127.0.0.1:{}", kFirstAmqpPort + node - 1);
    const auto it = std::find(hosts.begin(), hosts.end(), preferred);
    EXPECT_NE(it, hosts.end()) << preferred << " is not in " << url;
    if (it != hosts.end()) {
        std::rotate(hosts.begin(), it, hosts.end());
    }
    return fmt::format("{}{}{}", url.substr(0, at + 1), fmt::join(hosts, ","), url.substr(slash));
}

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
                std::vector<amqp::Message> jobs;
                for (int i = published_; i < due; ++i) {
                    jobs.push_back(Broker::job("diag.ledger", fmt::format(R"({{"ms": {}, "emit": 1}})", kJobMs),
                                               fmt::format("paced-{}", i)));
                }
                broker.publish_all(std::move(jobs));
                published_ = due;
                std::this_thread::sleep_for(100ms);
            }
        } catch (const std::exception& e) {
            failure_ = e.what();
        }
    }

    std::string url_;
    std::atomic<bool> stop_{false};
    std::atomic<int> published_{0};
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
};

class ClusterTest : public SchedulerFixture {
  protected:
    void SetUp() override {
        for (int node = 1; node <= kRabbitNodes; ++node) {
            ASSERT_GT(rabbit_pid(node), 0) << "the local cluster is not running: deploy/local/services start --cluster";
        }
        SchedulerFixture::SetUp();
        database_.query("TRUNCATE conveyor.schedules, conveyor.scheduled_jobs RESTART IDENTITY CASCADE");
    }

    /// Runs the workload through `fault` and checks that nothing was lost, applied twice or dead-lettered.
    void run_through(const Fault& fault) {
        const auto url = url_preferring(fault.busy_node);
        lead_busy_queues_from(url);
        if (HasFatalFailure()) {
            return;
        }
        std::vector<WorkerUnderTest> workers;
        workers.reserve(3);
        for (int i = 0; i < 3; ++i) {
            workers.push_back(start_worker({"--concurrency", "10", "--amqp-heartbeat", "5s", "--amqp-url", url},
                                           fmt::format("{}-worker-{}", fault.name, i)));
        }
        const auto schedules = write_file(fault.name + "-schedules", R"(schedules:
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
                                fmt::format("{}-scheduler-{}", fault.name, i)));
        }
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
        check_and_report(fault.name, publisher.published(), sampler.recovery(fault_start, published_all));
        for (auto& worker : workers) {
            worker.process->signal(SIGTERM);
        }
        for (auto& worker : workers) {
            EXPECT_TRUE(worker.process->wait(30s).has_value()) << worker.process->log();
        }
    }

    void check_and_report(const std::string& name, int published, const LedgerSampler::Recovery& recovery) {
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
        Broker broker(amqp_url(), BrokerOptions{.max_connect_attempts = 0});
        broker.connect();
        const auto dead_lettered = broker.ready("conveyor.diag.dlq");
        std::printf(
            "{\"name\":\"%s\",\"published\":%d,\"fires\":%lld,\"effects\":%lld,\"applied_once\":%lld,"
            "\"duplicate_effects\":%lld,\"dead_lettered\":%u,\"recovered_ms\":%lld,\"stalled_ms\":%lld,"
            "\"longest_pause_ms\":%lld}\n",
            name.c_str(), published, static_cast<long long>(fired), static_cast<long long>(expected),
            static_cast<long long>(applied_once), static_cast<long long>(duplicates), dead_lettered,
            static_cast<long long>(recovery.recovered_ms), static_cast<long long>(recovery.stalled_ms),
            static_cast<long long>(recovery.longest_pause_ms));
        std::fflush(stdout);
        EXPECT_EQ(applied_once, expected);
        EXPECT_EQ(rows(), expected) << "effects of jobs nobody published";
        EXPECT_EQ(duplicates, 0);
        EXPECT_EQ(fires_applied, fired);
        EXPECT_EQ(dead_lettered, 0U);
    }

    /// A quorum queue's leader is the node its declaring client is connected to (RabbitMQ 3.10's default): the diag
    /// family's queues are declared anew from the URL's first node, so that it leads them.
    void lead_busy_queues_from(const std::string& url) {
        for (const auto* queue : {"conveyor.diag", "conveyor.diag.high", "conveyor.diag.low", "conveyor.diag.dlq"}) {
            const auto [status, output] =
                run_command({"/usr/bin/curl", "-sS", "-m", "10", "-u", "guest:guest", "-X", "DELETE",
                             fmt::format("http://127.0.0.1:{}/api/queues/%2f/{}", kFirstManagementPort, queue)},
                            20s);
            ASSERT_EQ(status, 0) << output;
        }
        const auto [status, output] = run_command(
            {(binary_dir() / "conveyor").string(), "--amqp-url", url, "topology", "declare", "--families", "diag"},
            60s);
        ASSERT_EQ(status, 0) << output;
        ASSERT_EQ(leader_of("conveyor.diag"), node_of(url)) << queue_info("conveyor.diag");
    }

    static int node_of(const std::string& url) {
        const auto port = std::stoi(url.substr(url.rfind('@') + 1).substr(std::string("127.0.0.1:").size(), 4));
        return port - kFirstAmqpPort + 1;
    }

    static void expect_services(const std::vector<std::string>& args) {
        const auto [status, output] = services(args);
        EXPECT_EQ(status, 0) << output;
    }

    /// Waits until every member of the busy queue is back online, so the next fault meets a whole cluster.
    static void expect_all_members_online() {
        EXPECT_TRUE(eventually([] { return online_members("conveyor.diag") == kRabbitNodes; }, 120s))
            << queue_info("conveyor.diag");
    }
};

TEST_F(ClusterTest, KillingTheNodeThatLeadsTheBusyQueuesLosesAndDuplicatesNothing) {
    static constexpr int kVictim = 1;
    run_through({"cluster_kill_queue_leader", kVictim,
                 [] {
                     ASSERT_EQ(leader_of("conveyor.diag"), kVictim) << queue_info("conveyor.diag");
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
                 [] {
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
                     ASSERT_EQ(leader_of("conveyor.diag"), kVictim) << queue_info("conveyor.diag");
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
                     if (eventually(partitioned, 30s)) {
                         std::printf("{\"name\":\"cluster_freeze_node_partition\",\"healed_by\":\"restart\"}\n");
                         expect_services({"restart", "--cluster", fmt::format("rabbit{}", kVictim)});
                         EXPECT_TRUE(eventually([] { return !partitioned(); }, 60s)) << "the partition stayed";
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
                 10s, [] { expect_services({"pg-rejoin"}); }});
}

}  // namespace
}  // namespace conveyor::testing
