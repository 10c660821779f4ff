#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <ostream>
#include <span>
#include <string>

#include "conveyor/core/ip_networks.hpp"

namespace conveyor::scheduler {

/// conveyor-scheduler's configuration: every field is a flag and a CONVEYOR_* environment variable.
struct SchedulerSettings {
    /// Broker the relay publishes to (CONVEYOR_AMQP_URL).
    std::string amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    /// PEM CA file for amqps:// (CONVEYOR_AMQP_CA_FILE); empty skips peer verification.
    std::string amqp_ca_file;
    std::chrono::seconds amqp_heartbeat{10};
    /// Where scheduled jobs and schedule state live (CONVEYOR_PG_URL).
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    /// Where reads that may lag are served (CONVEYOR_PG_READ_URL): job history, audit entries, dead-letter listings,
    /// the console's overview. A standby takes that load off the primary; empty reads from the primary.
    std::string pg_read_url;
    std::size_t pg_pool_size = 10;
    std::chrono::milliseconds pg_statement_timeout{10'000};
    /// The YAML file of cron schedules (CONVEYOR_SCHEDULES); empty runs no schedules (the relay still runs).
    std::string schedules_file;
    /// Rows the relay claims and publishes per transaction (CONVEYOR_RELAY_BATCH).
    std::size_t relay_batch = 500;
    /// The relay looks for due rows at least this often, in case a NOTIFY was missed (CONVEYOR_RELAY_POLL_INTERVAL).
    std::chrono::milliseconds relay_poll_interval{1'000};
    /// Longest wait for a publish's confirm where database rows stay locked meanwhile (relay, dead-letter replay).
    std::chrono::milliseconds publish_timeout{10'000};
    /// Published and cancelled rows are kept this long; it is also how long an idempotency key is honoured
    /// (CONVEYOR_SCHEDULED_RETENTION).
    std::chrono::milliseconds retention{std::chrono::hours(24 * 7)};
    /// Move dead letters from conveyor.<family>.dlq into conveyor.dead_letters (CONVEYOR_ARCHIVE_DEAD_LETTERS).
    bool archive_dead_letters = true;
    /// Threads running the io_context (CONVEYOR_THREADS).
    unsigned threads = 2;
    /// On SIGTERM, time a relay batch in progress gets to finish (CONVEYOR_SHUTDOWN_GRACE).
    std::chrono::milliseconds shutdown_grace{10'000};
    std::string http_address = "127.0.0.1";
    std::uint16_t http_port = 9465;
    /// HTTP connections served at once; more are answered 503 (CONVEYOR_HTTP_MAX_CONNECTIONS).
    std::size_t http_max_connections = 512;
    /// API requests per second per client address, checked before authentication; 0 for none
    /// (CONVEYOR_HTTP_CLIENT_RATE).
    double http_client_rate = 200;
    /// Proxies (CIDR blocks) whose X-Forwarded-For names the client (CONVEYOR_HTTP_TRUSTED_PROXIES).
    IpNetworks http_trusted_proxies;
    /// YAML file of API tokens, by SHA-256 (CONVEYOR_API_TOKENS_FILE); without it every API request gets 401.
    std::string api_tokens_file;
    /// The key JSON Web Tokens are verified with: an HS256 shared secret (CONVEYOR_JWT_SECRET_FILE) or an RS256
    /// public key, PEM (CONVEYOR_JWT_PUBLIC_KEY_FILE); without either, bearer JWTs are refused.
    std::string jwt_secret_file;
    std::string jwt_public_key_file;
    /// The HTTP port serves HTTPS with this certificate chain and key, PEM (CONVEYOR_TLS_CERT_FILE,
    /// CONVEYOR_TLS_KEY_FILE; both or neither); the console's cookies are then Secure.
    std::string tls_cert_file;
    std::string tls_key_file;
    /// Prometheus's base URL (CONVEYOR_PROMETHEUS_URL): the console's overview shows its firing and pending alerts.
    std::string prometheus_url;
    /// A token's aud must name it (CONVEYOR_JWT_AUDIENCE); its iss must be jwt_issuer if that is set
    /// (CONVEYOR_JWT_ISSUER).
    std::string jwt_audience = "conveyor";
    std::string jwt_issuer;
    /// Requests per second per token unless the token sets its own (CONVEYOR_API_RATE_LIMIT).
    double api_rate_limit = 100;
    /// Largest request body (CONVEYOR_API_MAX_BODY_BYTES); a batch of 1,000 jobs must fit.
    std::size_t api_max_body_bytes = std::size_t{8} * 1024 * 1024;
    std::string log_level = "info";
    std::string log_format = "text";
    /// Identity in logs and in pg_stat_activity (CONVEYOR_SCHEDULER_NAME; default $POD_NAME or the host name).
    std::string name;
};

struct SchedulerParseResult {
    std::optional<SchedulerSettings> settings;  ///< empty when the process should exit (help, or an error)
    int exit_code = 0;
};

/// Parses argv and the environment; prints --help to `out` and errors (with what is wrong) to `err`.
[[nodiscard]] SchedulerParseResult parse_scheduler_settings(std::span<const char* const> argv, std::ostream& out,
                                                            std::ostream& err);

}  // namespace conveyor::scheduler
