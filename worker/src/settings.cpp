#include "conveyor/worker/settings.hpp"

#include <CLI/CLI.hpp>
#include <ostream>
#include <thread>

#include "conveyor/core/config.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::worker {

namespace {

/// CLI11 validator that accepts what parse_duration accepts.
CLI::Validator duration_validator() {
    return {[](std::string& value) -> std::string {
                try {
                    (void)parse_duration(value);
                    return {};
                } catch (const std::invalid_argument& e) {
                    return e.what();
                }
            },
            "DURATION"};
}

}  // namespace

ParseResult parse_worker_settings(std::span<const char* const> argv, std::ostream& out, std::ostream& err) {
    WorkerSettings settings;
    std::string queues = "orders,payments,emails,projections,diag";
    std::string job_timeout = "30s";
    std::string shutdown_grace = "30s";

    CLI::App app{
        "conveyor-worker: consumes Conveyor job queues from RabbitMQ and runs their handlers.\n"
        "Every option is also read from the CONVEYOR_* environment variable shown; a flag wins.",
        "conveyor-worker"};
    app.get_formatter()->column_width(40);
    app.option_defaults()->always_capture_default();
    // The broker URL can hold a password: its default is shown, an explicit value never is.
    app.add_option("--amqp-url", settings.amqp_url, "RabbitMQ URL (amqp:// or amqps://)")
        ->envname("CONVEYOR_AMQP_URL")
        ->default_str("amqp://guest:***@127.0.0.1:5672/%2f");
    app.add_option("--amqp-ca-file", settings.amqp_ca_file, "CA certificate (PEM) to verify an amqps:// broker")
        ->envname("CONVEYOR_AMQP_CA_FILE")
        ->check(CLI::ExistingFile);
    app.add_option("--queues", queues, "Comma-separated job families to consume")->envname("CONVEYOR_QUEUES");
    app.add_option("--concurrency", settings.concurrency, "Jobs run at once")
        ->envname("CONVEYOR_CONCURRENCY")
        ->check(CLI::Range(1U, 100'000U));
    app.add_option("--prefetch", settings.prefetch, "Unacknowledged deliveries per queue (0: = concurrency)")
        ->envname("CONVEYOR_PREFETCH")
        ->check(CLI::Range(0U, 65'535U));
    app.add_option("--threads", settings.threads, "I/O threads (0: one per core)")
        ->envname("CONVEYOR_THREADS")
        ->check(CLI::Range(0U, 256U));
    app.add_option("--job-timeout", job_timeout, "Default deadline of one job (e.g. 30s, 500ms)")
        ->envname("CONVEYOR_JOB_TIMEOUT")
        ->check(duration_validator());
    app.add_option("--shutdown-grace", shutdown_grace, "On SIGTERM, time in-flight jobs get before being requeued")
        ->envname("CONVEYOR_SHUTDOWN_GRACE")
        ->check(duration_validator());
    app.add_option("--max-message-bytes", settings.max_message_bytes, "Largest accepted message body")
        ->envname("CONVEYOR_MAX_MESSAGE_BYTES")
        ->check(CLI::Range(std::size_t{1}, std::size_t{128} * 1024 * 1024));
    app.add_option("--http-address", settings.http_address, "Address for /healthz, /readyz, /metrics")
        ->envname("CONVEYOR_HTTP_ADDRESS");
    app.add_option("--http-port", settings.http_port, "Port for /healthz, /readyz, /metrics")
        ->envname("CONVEYOR_HTTP_PORT");
    app.add_option("--log-level", settings.log_level, "trace, debug, info, warn, error")
        ->envname("CONVEYOR_LOG_LEVEL")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
    app.add_option("--name", settings.name, "Worker identity in logs and dead-letter headers")
        ->envname("CONVEYOR_WORKER_NAME")
        ->default_str("$POD_NAME or host name");

    try {
        app.parse(static_cast<int>(argv.size()), argv.data());
        settings.families = topology::parse_families(queues);
        settings.job_timeout = parse_duration(job_timeout);
        settings.shutdown_grace = parse_duration(shutdown_grace);
        (void)amqp::Url::parse(settings.amqp_url);
        if (settings.job_timeout.count() == 0) {
            throw std::invalid_argument("--job-timeout must be greater than zero");
        }
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e, out, err);
        return {std::nullopt, code == 0 ? 0 : 2};
    } catch (const std::invalid_argument& e) {
        err << "conveyor-worker: " << e.what() << "\nRun with --help for more information.\n";
        return {std::nullopt, 2};
    }
    if (settings.prefetch == 0) {
        settings.prefetch = std::min(settings.concurrency, 65'535U);
    }
    if (settings.threads == 0) {
        settings.threads = std::max(1U, std::thread::hardware_concurrency());
    }
    if (settings.name.empty()) {
        settings.name = default_instance_name();
    }
    return {std::move(settings), 0};
}

}  // namespace conveyor::worker
