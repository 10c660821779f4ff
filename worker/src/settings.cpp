#include "conveyor/worker/settings.hpp"

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <ostream>
#include <thread>

#include "conveyor/core/cli_options.hpp"
#include "conveyor/core/config.hpp"
#include "conveyor/core/topology.hpp"
#include "ready_jobs.hpp"

namespace conveyor::worker {

namespace {

std::uint32_t parse_attempts(std::string_view text) {
    std::uint32_t value = 0;
    const auto [rest, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc{} || rest != text.data() + text.size() || value < 1 || value > 1000) {
        throw std::invalid_argument(fmt::format("invalid attempts '{}': expected a number from 1 to 1000", text));
    }
    return value;
}

}  // namespace

RetryOverride RetryOverride::parse(std::string_view text) {
    const auto equals = text.find('=');
    if (equals == std::string_view::npos) {
        throw std::invalid_argument(
            fmt::format("invalid retry override '{}': expected TYPE=attempts:N,base:DURATION,cap:DURATION", text));
    }
    RetryOverride result;
    result.pattern = std::string(text.substr(0, equals));
    const bool family_wide = result.pattern.ends_with(".*");
    const auto family = std::string_view(result.pattern).substr(0, result.pattern.size() - 2);
    if (family_wide ? !is_valid_job_type(fmt::format("{}.x", family)) : !is_valid_job_type(result.pattern)) {
        throw std::invalid_argument(fmt::format(
            "invalid retry override '{}': '{}' is neither a job type nor 'family.*'", text, result.pattern));
    }
    auto fields = text.substr(equals + 1);
    while (!fields.empty()) {
        const auto comma = fields.find(',');
        const auto field = fields.substr(0, comma);
        fields = comma == std::string_view::npos ? std::string_view() : fields.substr(comma + 1);
        const auto colon = field.find(':');
        const auto name = field.substr(0, colon);
        const auto value = colon == std::string_view::npos ? std::string_view() : field.substr(colon + 1);
        if (name == "attempts") {
            result.max_attempts = parse_attempts(value);
        } else if (name == "base") {
            result.base_delay = parse_duration(value);
        } else if (name == "cap") {
            result.max_delay = parse_duration(value);
        } else {
            throw std::invalid_argument(fmt::format(
                "invalid retry override '{}': unknown field '{}' (known: attempts, base, cap)", text, name));
        }
    }
    if (!result.max_attempts && !result.base_delay && !result.max_delay) {
        throw std::invalid_argument(fmt::format("invalid retry override '{}': it changes nothing", text));
    }
    return result;
}

bool RetryOverride::matches(std::string_view type) const noexcept {
    if (pattern.ends_with(".*")) {
        const auto family = std::string_view(pattern).substr(0, pattern.size() - 1);  // keeps the dot
        return type.starts_with(family);
    }
    return type == pattern;
}

void RetryOverride::apply_to(RetryPolicy& policy) const noexcept {
    policy.max_attempts = max_attempts.value_or(policy.max_attempts);
    policy.base_delay = base_delay.value_or(policy.base_delay);
    policy.max_delay = max_delay.value_or(policy.max_delay);
}

std::vector<std::uint16_t> prefetch_shares(const WorkerSettings& settings) {
    const auto queues = static_cast<unsigned>(std::max<std::size_t>(settings.families.size(), 1));
    std::vector<std::uint16_t> shares;
    for (unsigned index = 0; index < settings.families.size(); ++index) {
        const auto share = settings.prefetch / queues + (index < settings.prefetch % queues ? 1U : 0U);
        shares.push_back(static_cast<std::uint16_t>(std::clamp(share, 1U, 65'535U)));
    }
    return shares;
}

RetryPolicy effective_retry_policy(const WorkerSettings& settings, const JobDefinition& definition) {
    auto policy = definition.options.retry.value_or(settings.retry);
    for (const bool family_wide : {true, false}) {
        for (const auto& override : settings.retry_overrides) {
            if (override.pattern.ends_with(".*") == family_wide && override.matches(definition.type)) {
                override.apply_to(policy);
            }
        }
    }
    return policy;
}

namespace {

/// What the command line gives as text, converted once it has been read.
struct OptionTexts {
    std::string queues = "orders,inventory,payments,emails,projections,diag";
    std::string job_timeout = "30s";
    std::string shutdown_grace = "30s";
    std::string retry_base_delay = "1s";
    std::string retry_max_delay = "1h";
    std::vector<std::string> retry_overrides;
    std::string pg_statement_timeout = "10s";
    std::string amqp_heartbeat = "10s";
    std::string inbox_retention = "14d";
    std::string outbox_sweep_interval = "5s";
    std::string history = "on";
    std::string group_commit = "on";
    std::string group_commit_wait = "0ms";
    std::string history_retention = "7d";
    std::string paused_recheck = "16s";
    std::string heartbeat_interval = "5s";
    std::string priority_weights = "6:3:1";
};

void add_broker_options(CLI::App& app, WorkerSettings& settings, OptionTexts& texts) {
    // The broker URL can hold a password: its default is shown, an explicit value never is.
    app.add_option("--amqp-url", settings.amqp_url, "RabbitMQ URL (amqp:// or amqps://)")
        ->envname("CONVEYOR_AMQP_URL")
        ->default_str("amqp://guest:***@127.0.0.1:5672/%2f");
    app.add_option("--amqp-ca-file", settings.amqp_ca_file, "CA certificate (PEM) to verify an amqps:// broker")
        ->envname("CONVEYOR_AMQP_CA_FILE")
        ->check(CLI::ExistingFile);
    app.add_option("--amqp-heartbeat", texts.amqp_heartbeat,
                   "Heartbeat interval; a broker silent for two of them is treated as gone")
        ->envname("CONVEYOR_AMQP_HEARTBEAT")
        ->check(duration_validator());
    app.add_option("--queues", texts.queues, "Comma-separated job families to consume")->envname("CONVEYOR_QUEUES");
    app.add_option(
           "--prefetch", settings.prefetch,
           "Unacknowledged deliveries per priority band, split evenly among the families (0: twice the concurrency)")
        ->envname("CONVEYOR_PREFETCH")
        ->check(CLI::Range(0U, 1'000'000U));
    app.add_option("--max-message-bytes", settings.max_message_bytes, "Largest accepted message body")
        ->envname("CONVEYOR_MAX_MESSAGE_BYTES")
        ->check(CLI::Range(std::size_t{1}, std::size_t{128} * 1024 * 1024));
}

void add_job_options(CLI::App& app, WorkerSettings& settings, OptionTexts& texts) {
    app.add_option("--concurrency", settings.concurrency, "Jobs run at once")
        ->envname("CONVEYOR_CONCURRENCY")
        ->check(CLI::Range(1U, 100'000U));
    app.add_option("--priority-weights", texts.priority_weights,
                   "Shares of the starts when several priority bands have jobs waiting, high:normal:low")
        ->envname("CONVEYOR_PRIORITY_WEIGHTS");
    app.add_option("--high-priority-reserved", settings.high_priority_reserved,
                   "Coroutines, out of the concurrency, that run only high-priority jobs")
        ->envname("CONVEYOR_HIGH_PRIORITY_RESERVED")
        ->check(CLI::Range(0U, 99'999U));
    app.add_option("--threads", settings.threads, "I/O threads (0: one per core)")
        ->envname("CONVEYOR_THREADS")
        ->check(CLI::Range(0U, 256U));
    app.add_option("--job-timeout", texts.job_timeout, "Default deadline of one job (e.g. 30s, 500ms)")
        ->envname("CONVEYOR_JOB_TIMEOUT")
        ->check(duration_validator());
    app.add_option("--shutdown-grace", texts.shutdown_grace,
                   "On SIGTERM, time in-flight jobs get before being requeued")
        ->envname("CONVEYOR_SHUTDOWN_GRACE")
        ->check(duration_validator());
    app.add_option("--quarantine-after", settings.quarantine_after,
                   "Worker deaths while a job ran alone before it is dead-lettered as poison")
        ->envname("CONVEYOR_QUARANTINE_AFTER")
        ->check(CLI::Range(1U, 100U));
    app.add_option("--paused-recheck", texts.paused_recheck,
                   "How long a job of a paused type (or one taken just before its queue paused) waits in the delay "
                   "ladder before a worker looks at it again (whole seconds)")
        ->envname("CONVEYOR_PAUSED_RECHECK")
        ->check(duration_validator());
}

void add_retry_options(CLI::App& app, WorkerSettings& settings, OptionTexts& texts) {
    app.add_option("--retry-max-attempts", settings.retry.max_attempts,
                   "Attempts in all before a failing job is dead-lettered (job types may set their own)")
        ->envname("CONVEYOR_RETRY_MAX_ATTEMPTS")
        ->check(CLI::Range(1U, 1000U));
    app.add_option("--retry-base-delay", texts.retry_base_delay,
                   "Backoff ceiling of the first retry; doubles per retry")
        ->envname("CONVEYOR_RETRY_BASE_DELAY")
        ->check(duration_validator());
    app.add_option("--retry-max-delay", texts.retry_max_delay, "Cap of the backoff ceiling")
        ->envname("CONVEYOR_RETRY_MAX_DELAY")
        ->check(duration_validator());
    app.add_option("--retry", texts.retry_overrides,
                   "Per-type policy, repeatable: TYPE=attempts:N,base:DURATION,cap:DURATION (TYPE may be family.*)")
        ->envname("CONVEYOR_RETRY")
        ->delimiter(';')
        ->default_str("");
}

void add_database_options(CLI::App& app, WorkerSettings& settings, OptionTexts& texts) {
    app.add_option("--pg-url", settings.pg_url, "PostgreSQL URL (inbox, outbox, execution records, job history)")
        ->envname("CONVEYOR_PG_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
    app.add_option("--pg-pool-size", settings.pg_pool_size, "Database connections at most")
        ->envname("CONVEYOR_PG_POOL_SIZE")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1000}));
    app.add_option("--pg-statement-timeout", texts.pg_statement_timeout, "Limit on each SQL statement")
        ->envname("CONVEYOR_PG_STATEMENT_TIMEOUT")
        ->check(duration_validator());
    app.add_option("--group-commit", texts.group_commit,
                   "Transactional jobs ready at the same moment share one transaction and commit, each in a savepoint "
                   "of its own: on or off")
        ->envname("CONVEYOR_GROUP_COMMIT")
        ->check(CLI::IsMember({"on", "off"}));
    app.add_option("--group-commit-max", settings.group_commit_max, "Jobs in one group commit at most")
        ->envname("CONVEYOR_GROUP_COMMIT_MAX")
        ->check(CLI::Range(std::size_t{1}, std::size_t{64}));
    app.add_option("--group-commit-lanes", settings.group_commit_lanes,
                   "Group commits under way at once, each on a database connection of its own")
        ->envname("CONVEYOR_GROUP_COMMIT_LANES")
        ->check(CLI::Range(std::size_t{1}, std::size_t{64}));
    app.add_option("--group-commit-open", settings.group_commit_open,
                   "Groups running their jobs at once (the others commit): more use more database cores; after a "
                   "job waited too long for a lock held by another group, only one opens for a while")
        ->envname("CONVEYOR_GROUP_COMMIT_OPEN")
        ->check(CLI::Range(std::size_t{1}, std::size_t{64}));
    app.add_option("--group-commit-wait", texts.group_commit_wait,
                   "How long a group with room left waits for one more job before it commits (e.g. 0ms, 2ms)")
        ->envname("CONVEYOR_GROUP_COMMIT_WAIT")
        ->check(duration_validator());
    app.add_option("--inbox-retention", texts.inbox_retention,
                   "How long processed job ids are kept to recognise duplicates (e.g. 14d)")
        ->envname("CONVEYOR_INBOX_RETENTION")
        ->check(duration_validator());
    app.add_option("--outbox-sweep-interval", texts.outbox_sweep_interval,
                   "How often outbox rows left behind by a crash are published")
        ->envname("CONVEYOR_OUTBOX_SWEEP_INTERVAL")
        ->check(duration_validator());
    app.add_option("--heartbeat-interval", texts.heartbeat_interval,
                   "How often the worker writes its heartbeat to conveyor.workers (1s to 1m); silent for three, it "
                   "shows as gone")
        ->envname("CONVEYOR_HEARTBEAT_INTERVAL")
        ->check(duration_validator());
    app.add_option("--history", texts.history, "Record every job's attempts in conveyor.job_events: on or off")
        ->envname("CONVEYOR_HISTORY")
        ->check(CLI::IsMember({"on", "off"}));
    app.add_option("--history-retention", texts.history_retention,
                   "How long job history is kept (whole days are dropped at a time)")
        ->envname("CONVEYOR_HISTORY_RETENTION")
        ->check(duration_validator());
    app.add_option("--history-buffer", settings.history_buffer,
                   "History events held while PostgreSQL is away; beyond, they are dropped and counted")
        ->envname("CONVEYOR_HISTORY_BUFFER")
        ->check(CLI::Range(std::size_t{1}, std::size_t{10'000'000}));
    app.add_option("--otlp-endpoint", settings.otlp.endpoint,
                   "OTLP/HTTP receiver (an OpenTelemetry collector, Jaeger) the spans go to, e.g. "
                   "http://collector:4318; empty: none")
        ->envname("CONVEYOR_OTLP_ENDPOINT")
        ->check(CLI::Validator(
            [](std::string& url) -> std::string {
                return url.empty() || url.starts_with("http://") || url.starts_with("https://")
                           ? std::string()
                           : "expected an http:// or https:// URL";
            },
            "URL"));
    app.add_option("--otlp-queue", settings.otlp.max_queue,
                   "Spans waiting for export at most; beyond, they are dropped and counted")
        ->envname("CONVEYOR_OTLP_QUEUE")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1'000'000}));
}

void add_operations_options(CLI::App& app, WorkerSettings& settings) {
    app.add_option("--http-address", settings.http_address, "Address for /healthz, /readyz, /metrics")
        ->envname("CONVEYOR_HTTP_ADDRESS");
    app.add_option("--http-port", settings.http_port, "Port for /healthz, /readyz, /metrics")
        ->envname("CONVEYOR_HTTP_PORT");
    app.add_option("--http-max-connections", settings.http_max_connections,
                   "HTTP connections served at once; more are answered 503")
        ->envname("CONVEYOR_HTTP_MAX_CONNECTIONS")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1'000'000}));
    app.add_option("--log-level", settings.log_level, "trace, debug, info, warn, error")
        ->envname("CONVEYOR_LOG_LEVEL")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
    app.add_option(
           "--log-format", settings.log_format,
           "text, or json: one JSON object per line with job id, type, attempt, queue, correlation and trace ids")
        ->envname("CONVEYOR_LOG_FORMAT")
        ->check(CLI::IsMember({"text", "json"}));
    app.add_option("--name", settings.name, "Worker identity in logs, dead-letter headers and the job history")
        ->envname("CONVEYOR_WORKER_NAME")
        ->default_str("$POD_NAME or host name");
}

/// Converts the texts; throws std::invalid_argument naming the option that is wrong.
void apply_texts(const OptionTexts& texts, WorkerSettings& settings) {
    settings.families = topology::parse_families(texts.queues);
    settings.job_timeout = parse_duration(texts.job_timeout);
    settings.shutdown_grace = parse_duration(texts.shutdown_grace);
    settings.retry.base_delay = parse_duration(texts.retry_base_delay);
    settings.retry.max_delay = parse_duration(texts.retry_max_delay);
    settings.pg_statement_timeout = parse_duration(texts.pg_statement_timeout);
    settings.amqp_heartbeat = std::chrono::duration_cast<std::chrono::seconds>(parse_duration(texts.amqp_heartbeat));
    if (settings.amqp_heartbeat < std::chrono::seconds(1)) {
        throw std::invalid_argument("--amqp-heartbeat must be at least 1s");
    }
    settings.inbox_retention = parse_duration(texts.inbox_retention);
    settings.outbox_sweep_interval = parse_duration(texts.outbox_sweep_interval);
    if (settings.outbox_sweep_interval.count() == 0 || settings.pg_statement_timeout.count() == 0) {
        throw std::invalid_argument("--outbox-sweep-interval and --pg-statement-timeout must be greater than zero");
    }
    settings.heartbeat_interval = parse_duration(texts.heartbeat_interval);
    if (settings.heartbeat_interval < std::chrono::seconds(1) ||
        settings.heartbeat_interval > std::chrono::minutes(1)) {
        throw std::invalid_argument("--heartbeat-interval must be 1s to 1m");
    }
    settings.paused_recheck = std::chrono::ceil<std::chrono::seconds>(parse_duration(texts.paused_recheck));
    if (settings.paused_recheck < std::chrono::seconds(1) || settings.paused_recheck > std::chrono::hours(1)) {
        throw std::invalid_argument("--paused-recheck must be 1s to 1h");
    }
    settings.priority_weights = parse_band_weights(texts.priority_weights);
    if (settings.high_priority_reserved >= settings.concurrency) {
        throw std::invalid_argument(fmt::format(
            "--high-priority-reserved ({}) must be less than --concurrency ({}): some coroutines must take every band",
            settings.high_priority_reserved, settings.concurrency));
    }
    settings.history = texts.history == "on";
    settings.group_commit = texts.group_commit == "on";
    settings.group_commit_wait = parse_duration(texts.group_commit_wait);
    if (settings.group_commit_wait > std::chrono::milliseconds(100)) {
        throw std::invalid_argument("--group-commit-wait must be at most 100ms: every job of the group waits it out");
    }
    if (settings.group_commit_open > settings.group_commit_lanes) {
        throw std::invalid_argument(fmt::format("--group-commit-open ({}) must not exceed --group-commit-lanes ({})",
                                                settings.group_commit_open, settings.group_commit_lanes));
    }
    if (settings.group_commit && settings.group_commit_lanes >= settings.pg_pool_size) {
        throw std::invalid_argument(fmt::format(
            "--group-commit-lanes ({}) must be less than --pg-pool-size ({}): each lane holds a connection, and jobs "
            "that run alone and reads need the others",
            settings.group_commit_lanes, settings.pg_pool_size));
    }
    settings.history_retention = parse_duration(texts.history_retention);
    if (settings.history_retention < std::chrono::hours(1)) {
        throw std::invalid_argument("--history-retention must be at least 1h");
    }
    for (const auto& text : texts.retry_overrides) {
        settings.retry_overrides.push_back(RetryOverride::parse(text));
    }
    if (settings.retry.max_delay < settings.retry.base_delay) {
        throw std::invalid_argument("--retry-max-delay must not be shorter than --retry-base-delay");
    }
    (void)amqp::Url::parse(settings.amqp_url);
    if (settings.job_timeout.count() == 0) {
        throw std::invalid_argument("--job-timeout must be greater than zero");
    }
}

void fill_defaults(WorkerSettings& settings) {
    if (settings.prefetch == 0) {
        // Prefetched jobs include running ones: twice the concurrency keeps jobs of every busy band at hand beside
        // the running ones, which the band preference needs to choose among.
        settings.prefetch = 2 * settings.concurrency;
    }
    if (settings.threads == 0) {
        settings.threads = std::max(1U, std::thread::hardware_concurrency());
    }
    if (settings.name.empty()) {
        settings.name = default_instance_name();
    }
}

}  // namespace

ParseResult parse_worker_settings(std::span<const char* const> argv, std::ostream& out, std::ostream& err,
                                  const std::function<void(CLI::App&)>& more_options) {
    WorkerSettings settings;
    OptionTexts texts;
    CLI::App app{
        "conveyor-worker: consumes Conveyor job queues from RabbitMQ and runs their handlers.\n"
        "Every option is also read from the CONVEYOR_* environment variable shown; a flag wins.",
        "conveyor-worker"};
    app.get_formatter()->column_width(40);
    app.option_defaults()->always_capture_default();
    add_broker_options(app, settings, texts);
    add_job_options(app, settings, texts);
    add_retry_options(app, settings, texts);
    add_database_options(app, settings, texts);
    add_operations_options(app, settings);
    if (more_options) {
        more_options(app);
    }
    try {
        app.parse(static_cast<int>(argv.size()), argv.data());
        apply_texts(texts, settings);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e, out, err);
        return {std::nullopt, code == 0 ? 0 : 2};
    } catch (const std::invalid_argument& e) {
        err << "conveyor-worker: " << e.what() << "\nRun with --help for more information.\n";
        return {std::nullopt, 2};
    }
    fill_defaults(settings);
    return {std::move(settings), 0};
}

}  // namespace conveyor::worker
