#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "conveyor/core/amqp.hpp"

/// Real processes, real HTTP and a real broker for the integration tests and the benchmark.
namespace conveyor::testing {

/// Environment the tests were pointed at (CONVEYOR_AMQP_URL), defaulting to the local stack.
[[nodiscard]] std::string amqp_url();
/// The schema owner's URL (CONVEYOR_PG_OWNER_URL, else CONVEYOR_PG_URL): what tests set up and inspect with.
[[nodiscard]] std::string pg_url();
/// The application role's URL (CONVEYOR_PG_URL): what the services under test connect as.
[[nodiscard]] std::string app_pg_url();

/// Where the project's binaries and scripts are.
[[nodiscard]] std::filesystem::path binary_dir();
[[nodiscard]] std::filesystem::path source_dir();

/// A child process with its output in a log file; killed (SIGKILL) and reaped on destruction if still running.
class Process {
  public:
    Process(std::filesystem::path program, std::vector<std::string> args, std::filesystem::path log_file,
            std::map<std::string, std::string> extra_env = {});
    ~Process();
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;

    [[nodiscard]] pid_t pid() const noexcept { return pid_; }
    void signal(int signo) const;
    /// Waits for exit; the exit status (or 128 + signal), or nullopt on timeout.
    std::optional<int> wait(std::chrono::milliseconds timeout);
    [[nodiscard]] bool running();
    [[nodiscard]] std::string log() const;

  private:
    pid_t pid_ = -1;
    std::optional<int> status_;
    std::filesystem::path log_file_;
};

/// Runs a command to completion; returns its exit status and combined output.
std::pair<int, std::string> run_command(const std::vector<std::string>& argv, std::chrono::seconds timeout);

/// GET http://127.0.0.1:port/path; nullopt if nothing answers. The pair is (status, body).
std::optional<std::pair<unsigned, std::string>> http_get(std::uint16_t port, const std::string& path);

/// POST http://127.0.0.1:port/path with a JSON body; nullopt if nothing answers. The pair is (status, body).
std::optional<std::pair<unsigned, std::string>> http_post(std::uint16_t port, const std::string& path,
                                                          const std::string& json);

/// Sum of the samples of a metric in a Prometheus text exposition whose labels include all of `labels`
/// (e.g. {"outcome=\"success\""}); 0 if absent.
double metric_sum(const std::string& exposition, const std::string& name, const std::vector<std::string>& labels = {});

/// Polls `condition` every 50 ms until it holds or the timeout passes.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout);

/// How a test's broker connection copes with a broker that goes away.
struct BrokerOptions {
    /// Failed connection attempts in a row before calls fail; 0 keeps trying (a client that must ride out failovers).
    unsigned max_connect_attempts = 3;
    /// AMQP heartbeat: how soon a frozen broker node is noticed.
    std::chrono::seconds heartbeat{30};
};

/// A synchronous facade over amqp::Connection for test code: its own io thread, blocking calls.
class Broker {
  public:
    explicit Broker(std::string url = amqp_url(), BrokerOptions options = {});
    ~Broker();

    /// Waits for the connection (three quick attempts); throws std::runtime_error with a clear message if the
    /// broker is not there.
    void connect();
    /// A fresh connection, after the broker restarted (the old one gives up after three attempts).
    void reconnect();
    /// Publishes with confirm; throws on nack, return or connection loss.
    void publish(amqp::Message message);
    /// Publishes many messages, a window of confirms at a time; throws if any is not confirmed.
    void publish_all(std::vector<amqp::Message> messages);
    /// A diag job as the wire contract describes it, with a fresh id unless given.
    static amqp::Message job(const std::string& type, const std::string& body, std::string job_id = {});
    amqp::QueueCounts counts(const std::string& queue);
    /// Ready (not unacknowledged) messages of a queue.
    std::uint32_t ready(const std::string& queue);
    void purge(const std::string& queue);
    /// Takes up to `count` messages off a queue (acknowledging them), waiting at most `timeout`.
    std::vector<amqp::Delivery> take(const std::string& queue, std::size_t count, std::chrono::milliseconds timeout);

  private:
    class Impl;
    std::unique_ptr<Impl> impl_;
};

/// A synchronous facade over a one-connection pg::Pool for test code. Values come back as text; NULL as "".
class Database {
  public:
    explicit Database(std::string url = pg_url());
    ~Database();

    using Rows = std::vector<std::vector<std::string>>;
    /// Runs one statement with text parameters; throws pg::Error.
    Rows query(const std::string& sql, const std::vector<std::string>& params = {});
    /// The first column of the first row as an integer.
    std::int64_t scalar(const std::string& sql, const std::vector<std::string>& params = {});

  private:
    class Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace conveyor::testing
