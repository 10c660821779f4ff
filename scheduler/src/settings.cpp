#include "conveyor/scheduler/settings.hpp"

#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/cli_options.hpp"
#include "conveyor/core/config.hpp"

namespace conveyor::scheduler {

SchedulerParseResult parse_scheduler_settings(std::span<const char* const> argv, std::ostream& out, std::ostream& err) {
    SchedulerSettings settings;
    std::string amqp_heartbeat = "10s";
    std::string pg_statement_timeout = "10s";
    std::string relay_poll_interval = "1s";
    std::string publish_timeout = "10s";
    std::string retention = "7d";
    std::string shutdown_grace = "10s";
    std::string trusted_proxies;

    CLI::App app{
        "conveyor-scheduler: fires cron schedules, publishes delayed and transactionally enqueued jobs when they are\n"
        "due, and serves the HTTP enqueue API. Run several replicas: each fire time is enqueued exactly once.\n"
        "Every option is also read from the CONVEYOR_* environment variable shown; a flag wins.",
        "conveyor-scheduler"};
    app.get_formatter()->column_width(40);
    app.option_defaults()->always_capture_default();
    // The broker URL can hold a password: its default is shown, an explicit value never is.
    app.add_option("--amqp-url", settings.amqp_url, "RabbitMQ URL (amqp:// or amqps://)")
        ->envname("CONVEYOR_AMQP_URL")
        ->default_str("amqp://guest:***@127.0.0.1:5672/%2f");
    app.add_option("--amqp-ca-file", settings.amqp_ca_file, "CA certificate (PEM) to verify an amqps:// broker")
        ->envname("CONVEYOR_AMQP_CA_FILE")
        ->check(CLI::ExistingFile);
    app.add_option("--amqp-heartbeat", amqp_heartbeat, "Heartbeat interval")
        ->envname("CONVEYOR_AMQP_HEARTBEAT")
        ->check(duration_validator());
    app.add_option("--pg-url", settings.pg_url, "PostgreSQL URL (scheduled jobs, schedule state)")
        ->envname("CONVEYOR_PG_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
    app.add_option("--pg-read-url", settings.pg_read_url,
                   "PostgreSQL URL for reads that may lag (job history, audit, dead-letter listings, overview), "
                   "e.g. a standby's; empty: the --pg-url database")
        ->envname("CONVEYOR_PG_READ_URL")
        ->default_str("");
    app.add_option("--pg-pool-size", settings.pg_pool_size, "Database connections at most")
        ->envname("CONVEYOR_PG_POOL_SIZE")
        ->check(CLI::Range(std::size_t{2}, std::size_t{1000}));
    app.add_option("--pg-statement-timeout", pg_statement_timeout, "Limit on each SQL statement")
        ->envname("CONVEYOR_PG_STATEMENT_TIMEOUT")
        ->check(duration_validator());
    app.add_option("--schedules", settings.schedules_file, "YAML file of cron schedules (none: no schedules)")
        ->envname("CONVEYOR_SCHEDULES")
        ->check(CLI::ExistingFile);
    app.add_option("--relay-batch", settings.relay_batch, "Due jobs published per transaction")
        ->envname("CONVEYOR_RELAY_BATCH")
        ->check(CLI::Range(std::size_t{1}, std::size_t{10'000}));
    app.add_option("--relay-poll-interval", relay_poll_interval,
                   "Longest wait between looks for due jobs (NOTIFY wakes the relay sooner)")
        ->envname("CONVEYOR_RELAY_POLL_INTERVAL")
        ->check(duration_validator());
    app.add_option("--publish-timeout", publish_timeout,
                   "Longest wait for the broker to confirm a publish made while rows stay locked (relay, dead-letter "
                   "replay); a broker that blocks publishing (resource alarm) fails it then")
        ->envname("CONVEYOR_PUBLISH_TIMEOUT")
        ->check(duration_validator());
    app.add_option("--retention", retention,
                   "How long published and cancelled jobs are kept (and their idempotency keys honoured)")
        ->envname("CONVEYOR_SCHEDULED_RETENTION")
        ->check(duration_validator());
    app.add_option("--archive-dead-letters", settings.archive_dead_letters,
                   "Move dead letters from the DLQs into PostgreSQL for inspection and replay (true/false)")
        ->envname("CONVEYOR_ARCHIVE_DEAD_LETTERS");
    app.add_option("--threads", settings.threads, "I/O threads")
        ->envname("CONVEYOR_THREADS")
        ->check(CLI::Range(1U, 64U));
    app.add_option("--shutdown-grace", shutdown_grace, "On SIGTERM, time the work in progress gets to finish")
        ->envname("CONVEYOR_SHUTDOWN_GRACE")
        ->check(duration_validator());
    app.add_option("--http-address", settings.http_address, "Address of the HTTP API, /healthz, /readyz, /metrics")
        ->envname("CONVEYOR_HTTP_ADDRESS");
    app.add_option("--http-port", settings.http_port, "Port of the HTTP API, /healthz, /readyz, /metrics")
        ->envname("CONVEYOR_HTTP_PORT");
    app.add_option("--http-max-connections", settings.http_max_connections,
                   "HTTP connections served at once; more are answered 503")
        ->envname("CONVEYOR_HTTP_MAX_CONNECTIONS")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1'000'000}));
    app.add_option("--http-client-rate", settings.http_client_rate,
                   "API requests per second per client address, before authentication (burst: 2 s worth; 0: none)")
        ->envname("CONVEYOR_HTTP_CLIENT_RATE")
        ->check(CLI::Range(0.0, 1e9));
    app.add_option("--http-trusted-proxies", trusted_proxies,
                   "Proxies whose X-Forwarded-For names the client: CIDR blocks or addresses, comma-separated")
        ->envname("CONVEYOR_HTTP_TRUSTED_PROXIES");
    app.add_option("--api-tokens-file", settings.api_tokens_file,
                   "YAML file of API tokens: tokens: [{name, sha256, scopes: [enqueue|admin], role, rate_limit}]")
        ->envname("CONVEYOR_API_TOKENS_FILE")
        ->check(CLI::ExistingFile);
    auto* jwt_secret = app.add_option("--jwt-secret-file", settings.jwt_secret_file,
                                      "File holding the HS256 secret (32 bytes or more) JSON Web Tokens are "
                                      "signed with")
                           ->envname("CONVEYOR_JWT_SECRET_FILE")
                           ->check(CLI::ExistingFile);
    app.add_option("--jwt-public-key-file", settings.jwt_public_key_file,
                   "PEM file of the RSA public key (2048 bits or more) RS256 JSON Web Tokens are verified with")
        ->envname("CONVEYOR_JWT_PUBLIC_KEY_FILE")
        ->check(CLI::ExistingFile)
        ->excludes(jwt_secret);
    auto* tls_cert = app.add_option("--tls-cert-file", settings.tls_cert_file,
                                    "PEM certificate chain: the HTTP port serves HTTPS (and console cookies are "
                                    "Secure); needs --tls-key-file")
                         ->envname("CONVEYOR_TLS_CERT_FILE")
                         ->check(CLI::ExistingFile);
    auto* tls_key = app.add_option("--tls-key-file", settings.tls_key_file, "PEM private key of --tls-cert-file")
                        ->envname("CONVEYOR_TLS_KEY_FILE")
                        ->check(CLI::ExistingFile);
    tls_cert->needs(tls_key);
    tls_key->needs(tls_cert);
    app.add_option("--prometheus-url", settings.prometheus_url,
                   "Prometheus whose alerts the console's overview shows, e.g. http://prometheus:9090 (default: none)")
        ->envname("CONVEYOR_PROMETHEUS_URL");
    app.add_option("--jwt-audience", settings.jwt_audience, "The audience a JSON Web Token's aud must name")
        ->envname("CONVEYOR_JWT_AUDIENCE");
    app.add_option("--jwt-issuer", settings.jwt_issuer, "The issuer a JSON Web Token's iss must be (default: any)")
        ->envname("CONVEYOR_JWT_ISSUER");
    app.add_option("--api-rate-limit", settings.api_rate_limit,
                   "API requests per second per token (a token may set its own)")
        ->envname("CONVEYOR_API_RATE_LIMIT")
        ->check(CLI::Range(0.001, 1e9));
    app.add_option("--api-max-body-bytes", settings.api_max_body_bytes, "Largest API request body")
        ->envname("CONVEYOR_API_MAX_BODY_BYTES")
        ->check(CLI::Range(std::size_t{1024}, std::size_t{256} * 1024 * 1024));
    app.add_option("--log-level", settings.log_level, "trace, debug, info, warn, error")
        ->envname("CONVEYOR_LOG_LEVEL")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
    app.add_option("--log-format", settings.log_format, "text, or json: one JSON object per line")
        ->envname("CONVEYOR_LOG_FORMAT")
        ->check(CLI::IsMember({"text", "json"}));
    app.add_option("--name", settings.name, "Replica identity in logs")
        ->envname("CONVEYOR_SCHEDULER_NAME")
        ->default_str("$POD_NAME or host name");

    try {
        app.parse(static_cast<int>(argv.size()), argv.data());
        (void)amqp::Url::parse(settings.amqp_url);
        settings.amqp_heartbeat = std::chrono::duration_cast<std::chrono::seconds>(parse_duration(amqp_heartbeat));
        if (settings.amqp_heartbeat < std::chrono::seconds(1)) {
            throw std::invalid_argument("--amqp-heartbeat must be at least 1s");
        }
        settings.pg_statement_timeout = parse_duration(pg_statement_timeout);
        settings.relay_poll_interval = parse_duration(relay_poll_interval);
        settings.publish_timeout = parse_duration(publish_timeout);
        settings.retention = parse_duration(retention);
        settings.shutdown_grace = parse_duration(shutdown_grace);
        try {
            settings.http_trusted_proxies = IpNetworks::parse(trusted_proxies);
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(fmt::format("--http-trusted-proxies: {}", e.what()));
        }
        if (settings.pg_statement_timeout.count() == 0 || settings.relay_poll_interval.count() == 0 ||
            settings.publish_timeout.count() == 0) {
            throw std::invalid_argument(
                "--pg-statement-timeout, --relay-poll-interval and --publish-timeout must be greater than zero");
        }
        if (settings.retention < std::chrono::minutes(1)) {
            throw std::invalid_argument("--retention must be at least 1m (idempotency keys live that long)");
        }
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e, out, err);
        return {std::nullopt, code == 0 ? 0 : 2};
    } catch (const std::invalid_argument& e) {
        err << "conveyor-scheduler: " << e.what() << "\nRun with --help for more information.\n";
        return {std::nullopt, 2};
    }
    if (settings.name.empty()) {
        settings.name = default_instance_name();
    }
    return {std::move(settings), 0};
}

}  // namespace conveyor::scheduler
