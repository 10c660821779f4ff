#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "conveyor/core/topology.hpp"
#include "test_support.hpp"

namespace conveyor::testing {

/// A header of a delivery as text ("" if absent), for assertions.
inline std::string header_text(const amqp::Delivery& delivery, const std::string& name) {
    const auto* value = amqp::find_header(delivery.message.properties.headers, name);
    if (value == nullptr) {
        return {};
    }
    if (const auto* text = std::get_if<std::string>(value)) {
        return *text;
    }
    if (const auto* number = std::get_if<std::int64_t>(value)) {
        return std::to_string(*number);
    }
    return "?";
}

/// Expects every name in a golden file (one per line, # comments) to be a metric family of the exposition; returns
/// how many names it checked.
inline int expect_metric_names(const std::string& exposition, const std::filesystem::path& golden_file) {
    std::ifstream golden(golden_file);
    EXPECT_TRUE(golden) << golden_file << " missing";
    std::string name;
    int checked = 0;
    while (std::getline(golden, name)) {
        if (name.empty() || name[0] == '#') {
            continue;
        }
        ++checked;
        EXPECT_NE(exposition.find("\n# TYPE " + name + " "), std::string::npos) << name << " missing from /metrics";
    }
    return checked;
}

/// A conveyor-worker process consuming the diag family, with its HTTP port and log.
struct WorkerUnderTest {
    std::unique_ptr<Process> process;
    std::uint16_t port;

    [[nodiscard]] std::string metrics() const {
        auto response = http_get(port, "/metrics");
        return response ? response->second : std::string();
    }
    [[nodiscard]] double metric(const std::string& name, const std::vector<std::string>& labels = {}) const {
        return metric_sum(metrics(), name, labels);
    }
    [[nodiscard]] double succeeded() const { return metric("conveyor_jobs_completed_total", {"outcome=\"success\""}); }
    [[nodiscard]] bool ready() const {
        auto response = http_get(port, "/readyz");
        return response && response->first == 200;
    }
};

/// Freezes the local broker (SIGSTOP) for the scope, as a stalled or partitioned broker would look.
class FrozenBroker {
  public:
    FrozenBroker() {
        const char* state_dir = std::getenv("CONVEYOR_STATE_DIR");
        const std::filesystem::path state = state_dir != nullptr ? state_dir : source_dir() / ".state";
        std::ifstream pid_file(state / "rabbitmq/rabbitmq.pid");
        pid_file >> pid_;
        if (pid_ > 0) {
            ::kill(pid_, SIGSTOP);
        }
    }
    ~FrozenBroker() {
        if (pid_ > 0) {
            ::kill(pid_, SIGCONT);
        }
    }
    [[nodiscard]] bool frozen() const { return pid_ > 0; }

  private:
    pid_t pid_ = 0;
};

/// Runs rabbitmqctl against the local node through the stack script.
inline void rabbitmqctl(const std::vector<std::string>& args) {
    std::vector<std::string> command{(source_dir() / "deploy/local/services").string(), "rabbitmqctl"};
    command.insert(command.end(), args.begin(), args.end());
    auto [status, output] = run_command(command, std::chrono::seconds(60));
    ASSERT_EQ(status, 0) << output;
}

/// Puts the broker under a memory alarm for the scope, so it blocks publishing connections.
class MemoryAlarm {
  public:
    MemoryAlarm() { rabbitmqctl({"set_vm_memory_high_watermark", "0"}); }
    ~MemoryAlarm() { lift(); }
    void lift() {
        if (!lifted_) {
            lifted_ = true;
            rabbitmqctl({"set_vm_memory_high_watermark", "0.4"});
        }
    }

  private:
    bool lifted_ = false;
};

/// Each test starts from empty diag queues on the real broker and empty Conveyor tables in the real database.
class WorkerTest : public ::testing::Test {
  protected:
    void SetUp() override {
        broker_.connect();
        static const bool migrated = [this] {
            run_cli({"migrate", "--pg-url", pg_url()});
            return true;
        }();
        (void)migrated;
        run_cli({"topology", "declare", "--families", "diag"});
        broker_.purge("conveyor.diag");
        broker_.purge("conveyor.diag.high");
        broker_.purge("conveyor.diag.low");
        broker_.purge("conveyor.diag.dlq");
        database_.query(
            "TRUNCATE conveyor.diag_ledger, conveyor.inbox, conveyor.outbox, conveyor.job_executions, "
            "conveyor.job_events, conveyor.job_cancellations, conveyor.queue_pauses RESTART IDENTITY");
    }

    WorkerUnderTest start_worker(std::vector<std::string> args, const std::string& log_name, bool expect_ready = true,
                                 std::map<std::string, std::string> env = {}) {
        static std::uint16_t next_port = 19470;
        const auto port = next_port++;
        if (std::find(args.begin(), args.end(), "--queues") == args.end()) {
            args.insert(args.end(), {"--queues", "diag"});
        }
        args.insert(args.end(), {"--http-address", "127.0.0.1", "--http-port", std::to_string(port)});
        if (std::find(args.begin(), args.end(), "--amqp-url") == args.end()) {
            args.insert(args.end(), {"--amqp-url", amqp_url()});
        }
        if (std::find(args.begin(), args.end(), "--pg-url") == args.end()) {
            args.insert(args.end(), {"--pg-url", app_pg_url()});
        }
        const auto log = std::filesystem::temp_directory_path() / ("conveyor-" + log_name + ".log");
        WorkerUnderTest worker{std::make_unique<Process>(binary_dir() / "conveyor-worker", args, log, std::move(env)),
                               port};
        if (expect_ready) {
            const bool ready =
                eventually([&] { return worker.ready() || !worker.process->running(); }, std::chrono::seconds(30));
            if (!ready || !worker.process->running()) {
                ADD_FAILURE() << "worker did not become ready; its log:\n" << worker.process->log();
            }
        }
        return worker;
    }

    /// Another session (psql) locks the ledger row of `job_id` (created with applied = 0) FOR UPDATE and holds it for
    /// 3 s, as a long report or a stuck migration would; returns once the row is held.
    std::unique_ptr<Process> hold_ledger_row(const std::string& job_id) {
        database_.query("INSERT INTO conveyor.diag_ledger (job_id, applied) VALUES ($1, 0)", {job_id});
        const auto hold_the_row = fmt::format(
            "BEGIN; SELECT * FROM conveyor.diag_ledger WHERE job_id = '{}' FOR UPDATE; SELECT pg_sleep(3); COMMIT;",
            job_id);
        auto holder = std::make_unique<Process>(
            "/usr/bin/psql", std::vector<std::string>{pg_url(), "-X", "-q", "-c", hold_the_row},
            std::filesystem::temp_directory_path() / ("conveyor-lock-holder-" + job_id + ".log"));
        const bool held = eventually(
            [&] {
                return database_.scalar(
                           "SELECT count(*) FROM (SELECT FROM conveyor.diag_ledger WHERE job_id = $1 "
                           "FOR UPDATE SKIP LOCKED) AS free",
                           {job_id}) == 0;
            },
            std::chrono::seconds(10));
        EXPECT_TRUE(held) << "psql did not lock the row of " << job_id;
        return holder;
    }

    /// Publishes `count` diag.sleep jobs of `ms` milliseconds each.
    void publish_sleeps(int count, int ms) {
        for (int i = 0; i < count; ++i) {
            broker_.publish(Broker::job("diag.sleep", fmt::format(R"({{"ms": {}}})", ms)));
        }
    }

    /// Empties the e-commerce tables (shop.*, inventory.*) for a test of the order saga.
    void reset_shop() {
        // The event store refuses TRUNCATE to everyone but a replica session.
        database_.query("SET session_replication_role = replica");
        database_.query(
            "TRUNCATE shop.events, shop.payments, shop.order_items, shop.orders, shop.customers, shop.products, "
            "shop.email_log, shop.order_summary, shop.customer_stats, shop.daily_sales, shop.projection_checkpoints, "
            "shop.events_archive, shop.archived_months, inventory.events, inventory.reservation_lines, "
            "inventory.reservations, inventory.stock RESTART IDENTITY");
        database_.query("SET session_replication_role = DEFAULT");
    }

    std::string run_cli(std::vector<std::string> args) {
        args.insert(args.begin(), (binary_dir() / "conveyor").string());
        args.insert(args.begin() + 1, {"--amqp-url", amqp_url()});
        auto [status, output] = run_command(args, std::chrono::seconds(120));
        EXPECT_EQ(status, 0) << output;
        return output;
    }

    Broker broker_;
    Database database_;
};

}  // namespace conveyor::testing
