#include "conveyor/cli/cli.hpp"

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdlib>
#include <iostream>
#include <map>

#include "commands.hpp"
#include "conveyor/core/cli_options.hpp"
#include "conveyor/core/config.hpp"
#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/logging.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::cli {
namespace asio = boost::asio;

int with_connection(amqp::Connection& connection, std::string_view command, const ConnectedBody& body) {
    asio::io_context io;
    connection.start();
    int exit_code = kOk;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto [error] = co_await connection.async_wait_ready(asio::as_tuple(asio::use_awaitable));
            if (error) {
                std::cerr << fmt::format("conveyor {}: cannot reach the broker: {}\n", command,
                                         connection.last_error());
                exit_code = kUnavailable;
                co_return;
            }
            exit_code = co_await body(io);
        },
        log_failure(std::string(command)));
    io.run();
    connection.stop();
    return exit_code;
}

amqp::ConnectionSettings cli_connection_settings(const CommonOptions& common, std::string name) {
    amqp::ConnectionSettings settings;
    settings.url = amqp::Url::parse(common.amqp_url);
    settings.name = std::move(name);
    settings.tls_ca_file = common.amqp_ca_file;
    settings.connect_timeout = std::chrono::seconds(5);
    settings.max_connect_attempts = 3;
    return settings;
}

namespace {

std::string queue_details(const amqp::QueueSpec& queue) {
    const auto* ttl = amqp::find_header(queue.arguments, "x-message-ttl");
    const auto* limit = amqp::find_header(queue.arguments, "x-delivery-limit");
    const auto* group = amqp::find_header(queue.arguments, "x-quorum-initial-group-size");
    std::string details = "quorum";
    if (group != nullptr) {
        details += fmt::format(", {} members", std::get<std::int64_t>(*group));
    }
    if (ttl != nullptr) {
        details += fmt::format(", delay {} s", std::get<std::int64_t>(*ttl) / 1000);
    }
    if (limit != nullptr) {
        details += fmt::format(", delivery limit {}", std::get<std::int64_t>(*limit));
    }
    return details;
}

/// Says what differs on the broker and what can be done about it; kFailed unless only initial group sizes differ
/// (they only matter when a queue is made).
int report_mismatches(const std::vector<amqp::QueueMismatch>& mismatches) {
    bool only_group_sizes = true;
    for (const auto& mismatch : mismatches) {
        const bool group_size = mismatch.broker_says.find("x-quorum-initial-group-size") != std::string::npos;
        only_group_sizes = only_group_sizes && group_size;
        std::cout << fmt::format("unchanged {} ({}): {}\n", mismatch.queue,
                                 group_size ? "made before its group size was explicit" : "other arguments",
                                 mismatch.broker_says);
    }
    if (mismatches.empty()) {
        return kOk;
    }
    std::cerr << "conveyor topology declare: RabbitMQ cannot change a queue's arguments once it exists, so the queues\n"
                 "above were left as they are (workers use them as they find them). To converge:\n"
                 "  - x-quorum-initial-group-size only matters when a queue is made: check its members with\n"
                 "    `rabbitmq-queues quorum_status <queue>` and add some with `rabbitmq-queues grow <node> all`;\n"
                 "  - x-delivery-limit: a policy's delivery-limit can lower it (the lower of the two applies);\n"
                 "  - anything else: stop its producers, let it drain, delete it, and declare again.\n"
                 "RabbitMQ names one differing argument per queue: declare again after each change.\n";
    return only_group_sizes ? kOk : kFailed;
}

int declare_topology(const CommonOptions& common, const std::string& families_list) {
    const auto families = topology::parse_families(families_list);
    const auto topology = topology::job_topology(families);
    amqp::Connection connection(cli_connection_settings(common, "conveyor topology"), topology);
    return with_connection(connection, "topology declare", [&](asio::io_context&) -> asio::awaitable<int> {
        for (const auto& exchange : topology.exchanges) {
            std::cout << fmt::format("exchange {} ({})\n", exchange.name, exchange.type);
        }
        for (const auto& queue : topology.queues) {
            std::cout << fmt::format("queue    {} ({})\n", queue.name, queue_details(queue));
        }
        for (const auto& binding : topology.bindings) {
            std::cout << fmt::format("binding  {} -> {} by '{}'\n", binding.exchange, binding.queue,
                                     binding.routing_key);
        }
        for (const auto& binding : topology.exchange_bindings) {
            std::cout << fmt::format("binding  {} -> exchange {} by '{}'\n", binding.source, binding.destination,
                                     binding.routing_key);
        }
        co_return report_mismatches(connection.queue_mismatches());
    });
}

/// `conveyor queues` and its pause and resume.
struct QueuesCommands {
    CLI::App* show;
    CLI::App* pause;
    CLI::App* resume;
};

/// conveyor audit and conveyor workers: the records operators read during and after an incident.
struct FleetCommands {
    CLI::App* audit;
    CLI::App* workers;
};

FleetCommands add_fleet_commands(CLI::App& app, AuditOptions& audit, bool& workers_json) {
    auto* audit_cmd = app.add_subcommand(
        "audit", "The audit log, newest first: who cancelled, paused, resumed, replayed, purged or applied limits");
    audit_cmd->add_option("--pg-url", audit.pg_url, "PostgreSQL URL")
        ->envname("CONVEYOR_PG_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
    audit_cmd->add_option("--actor", audit.filter.actor, "Only this actor (api:NAME, api:user:SUB, user@host)");
    audit_cmd->add_option("--action", audit.filter.action,
                          "Only this action: cancel, pause, resume, replay, purge, apply_flow_limits, run_now");
    audit_cmd->add_option("--job", audit.filter.job_id, "Only entries that touched this job");
    audit_cmd->add_option("--limit", audit.filter.limit, "Entries at most (1 to 1000)")->capture_default_str();
    audit_cmd->add_option("--before", audit.filter.before, "Entries older than this id (the next page)");
    audit_cmd->add_flag("--json", audit.json, "As one JSON object");
    auto* workers_cmd =
        app.add_subcommand("workers", "The workers on record: running, stopped, or gone (silent for three heartbeats)");
    workers_cmd->add_option("--pg-url", audit.pg_url, "PostgreSQL URL")
        ->envname("CONVEYOR_PG_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
    workers_cmd->add_flag("--json", workers_json, "As one JSON object");
    return {audit_cmd, workers_cmd};
}

QueuesCommands add_queues_commands(CLI::App& app, QueuesOptions& queues, PauseOptions& pause) {
    auto* show = app.add_subcommand("queues", "Ready messages, consumers and pauses of each job and dead-letter queue");
    show->add_option("--families", queues.families, "Comma-separated job families");
    show->add_option("--pg-url", queues.pg_url, "PostgreSQL URL (where pauses are recorded)")
        ->envname("CONVEYOR_PG_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
    show->add_flag("--json", queues.json, "One JSON object per line");
    show->require_subcommand(0, 1);
    show->fallthrough();
    QueuesCommands commands{show, nullptr, nullptr};
    for (const bool pausing : {true, false}) {
        auto* command = show->add_subcommand(
            pausing ? "pause" : "resume",
            pausing ? "Stop every worker from starting jobs of a family (or of one type of it), fleet-wide and "
                      "durably; running jobs finish, queued ones wait, no attempt is used"
                    : "Let workers take a paused family's (or type's) jobs again");
        command
            ->add_option("family", pause.family, "Job family (orders, inventory, payments, emails, projections, diag)")
            ->required();
        command->add_option("--type", pause.job_type, "Only this job type of the family (e.g. emails.send)");
        command->add_flag("--json", pause.json, "The new state as one JSON object");
        (pausing ? commands.pause : commands.resume) = command;
    }
    return commands;
}

void add_jobs_filters(CLI::App& command, JobsListOptions& options) {
    auto& filter = options.filter;
    command.add_option("--type", filter.type, "Only this job type");
    command.add_option("--state", filter.state,
                       "Only jobs in this state: running, succeeded, retrying, dead_lettered, cancelled");
    command.add_option("--queue", filter.queue, "Only jobs taken from this queue (e.g. conveyor.orders)");
    command.add_option("--correlation-id", filter.correlation_id, "Only jobs with this correlation id");
    command.add_option("--since", filter.since,
                       "Latest event at or after this time: a timestamp (2026-12-05T08:00:00Z) or an interval back "
                       "from now ('2 hours', '7 days')");
    command.add_option("--limit", filter.limit, "At most this many (1 to 1000)")
        ->check(CLI::Range(std::int64_t{1}, std::int64_t{1000}));
    command.add_option("--after", filter.after, "The cursor printed for the next page");
    command.add_flag("--json", options.json, "One JSON object per line");
}

}  // namespace

int run(std::span<const char* const> argv, std::vector<pg::Migration> migrations,
        const std::vector<Command>& commands) {
    CommonOptions common;
    MigrateOptions migrate_options;
    std::string statement_timeout = "10m";
    EnqueueOptions enqueue_options;
    std::string families = fmt::format("{}", fmt::join(topology::default_families(), ","));

    CLI::App app{
        "conveyor: operator CLI for the Conveyor job platform.\n"
        "Options are also read from the CONVEYOR_* environment variables shown; a flag wins.",
        "conveyor"};
    app.require_subcommand(1);
    app.option_defaults()->always_capture_default();
    app.add_option("--amqp-url", common.amqp_url, "RabbitMQ URL (amqp:// or amqps://)")
        ->envname("CONVEYOR_AMQP_URL")
        ->default_str("amqp://guest:***@127.0.0.1:5672/%2f");
    app.add_option("--amqp-ca-file", common.amqp_ca_file, "CA certificate (PEM) to verify an amqps:// broker")
        ->envname("CONVEYOR_AMQP_CA_FILE")
        ->check(CLI::ExistingFile);
    app.add_option("--log-level", common.log_level, "trace, debug, info, warn, error")
        ->envname("CONVEYOR_LOG_LEVEL")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
    app.add_option("--log-format", common.log_format, "text, or json: one JSON object per line")
        ->envname("CONVEYOR_LOG_FORMAT")
        ->check(CLI::IsMember({"text", "json"}));

    auto* enqueue_cmd = app.add_subcommand(
        "enqueue", "Publish jobs to conveyor.jobs with publisher confirms; prints the job ids (up to 100) or a count");
    enqueue_cmd->add_option("type", enqueue_options.type, "Job type, <family>.<action> (e.g. diag.noop)")->required();
    enqueue_cmd->add_option("--payload", enqueue_options.payload,
                            "Job payload, a JSON object; {{seq}} becomes each job's number (0, 1, …) and "
                            "{{job_id}} its id");
    enqueue_cmd->add_option("--count", enqueue_options.count, "How many jobs to publish (each gets its own id)")
        ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{100'000'000}));
    enqueue_cmd->add_option("--rate", enqueue_options.rate, "Jobs per second (0: as fast as the broker confirms)")
        ->check(CLI::NonNegativeNumber);
    enqueue_cmd->add_option("--correlation-id", enqueue_options.correlation_id, "correlation_id for every job");
    enqueue_cmd->add_option("--job-id", enqueue_options.job_id, "Job id (message_id) to use; only with --count 1");
    enqueue_cmd->add_option("--window", enqueue_options.window, "Publishes awaiting a confirm at once")
        ->check(CLI::Range(1U, 100'000U));
    enqueue_cmd
        ->add_option("--priority", enqueue_options.priority,
                     "Priority band of every job: high, normal or low (x-conveyor-priority)")
        ->check(CLI::IsMember({"high", "normal", "low"}));
    auto* unique_key_option = enqueue_cmd->add_option(
        "--unique-key", enqueue_options.unique_key,
        "Unique job: while a job of this type with this key is queued or running (or within --unique-for after it "
        "ended), another is discarded as deduplicated");
    enqueue_cmd
        ->add_option("--unique-for", enqueue_options.unique_for,
                     "Seconds the unique key stays held after the job ended (default 0)")
        ->check(CLI::Range(std::int64_t{0}, job_headers::kMaxUniqueForSeconds))
        ->needs(unique_key_option);
    enqueue_cmd->add_flag("!--no-progress", enqueue_options.progress, "Do not print progress on stderr");
    auto* at_option = enqueue_cmd->add_option(
        "--at", enqueue_options.at,
        "Run at this time (e.g. 2026-12-24T18:00:00Z or '2026-12-24 18:00 Europe/Berlin'); stored in PostgreSQL and "
        "published by conveyor-scheduler");
    enqueue_cmd->add_option("--in", enqueue_options.in, "Run after this delay (e.g. 90s, 15m, 2h); like --at")
        ->check(duration_validator())
        ->excludes(at_option);
    enqueue_cmd->add_option("--idempotency-key", enqueue_options.idempotency_key,
                            "Enqueue through conveyor.enqueue() once per key: the same key returns the same job id");
    enqueue_cmd->add_option("--batch", enqueue_options.batch,
                            "Add every job to this open batch (x-conveyor-batch; see conveyor batches)");
    enqueue_cmd
        ->add_option("--pg-url", enqueue_options.pg_url, "PostgreSQL URL (with --at, --in, --idempotency-key, --batch)")
        ->envname("CONVEYOR_PG_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");

    ScheduledListOptions scheduled_options;
    std::vector<std::string> cancel_ids;
    auto* scheduled_cmd = app.add_subcommand("scheduled", "Jobs waiting in PostgreSQL to be published when due");
    scheduled_cmd->require_subcommand(1);
    scheduled_cmd->add_option("--pg-url", scheduled_options.pg_url, "PostgreSQL URL")
        ->envname("CONVEYOR_PG_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
    auto* scheduled_list_cmd = scheduled_cmd->add_subcommand("list", "List scheduled jobs, earliest first");
    scheduled_list_cmd->add_option("--state", scheduled_options.state, "pending, published, cancelled, failed or all");
    scheduled_list_cmd->add_option("--type", scheduled_options.type, "Only jobs of this type");
    scheduled_list_cmd->add_option("--limit", scheduled_options.limit, "At most this many rows")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1'000'000}));
    scheduled_list_cmd->add_flag("--json", scheduled_options.json, "One JSON object per line");
    auto* scheduled_cancel_cmd =
        scheduled_cmd->add_subcommand("cancel", "Cancel pending scheduled jobs by id (published ones cannot be)");
    scheduled_cancel_cmd->add_option("id", cancel_ids, "Job ids")->required();
    auto* scheduled_run_cmd =
        scheduled_cmd->add_subcommand("run", "Make pending scheduled jobs due now (the relay publishes them at once)");
    scheduled_run_cmd->add_option("id", cancel_ids, "Job ids")->required();

    DlqOptions dlq_options;
    std::string dlq_state = "dead";
    std::int64_t dlq_show_id = 0;
    std::map<std::string, std::string> dlq_filter_values;
    auto* dlq_cmd =
        app.add_subcommand("dlq", "Dead letters, archived from the DLQs into PostgreSQL by conveyor-scheduler");
    dlq_cmd->require_subcommand(1);
    dlq_cmd->add_option("--pg-url", dlq_options.pg_url, "PostgreSQL URL")
        ->envname("CONVEYOR_PG_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
    // The same filters on every command that selects dead letters.
    auto add_filters = [&](CLI::App* command) {
        for (const auto& [flag, help] : std::initializer_list<std::pair<const char*, const char*>>{
                 {"--family", "Only this job family (orders, payments, …)"},
                 {"--type", "Only this job type"},
                 {"--reason", "Only this reason (permanent_failure, invalid_payload, timeout, …)"},
                 {"--error", "Only errors containing this text (case-insensitive)"},
                 {"--since", "Failed at or after this time (a timestamp, e.g. 2026-11-22T08:00:00Z)"},
                 {"--until", "Failed before this time"},
                 {"--job-id", "Only this job"},
                 {"--fingerprint", "Only this error group (conveyor dlq groups)"}}) {
            command->add_option(flag, dlq_filter_values[std::string(flag).substr(2)], help);
        }
        command->add_option("--state", dlq_state, "dead (default), replayed or all");
        command->add_flag("--json", dlq_options.json, "One JSON object per line");
    };
    auto* dlq_list_cmd = dlq_cmd->add_subcommand("list", "Dead letters, oldest first");
    add_filters(dlq_list_cmd);
    dlq_list_cmd->add_option("--limit", dlq_options.limit, "At most this many")
        ->check(CLI::Range(std::int64_t{1}, std::int64_t{10'000'000}));
    auto* dlq_show_cmd = dlq_cmd->add_subcommand("show", "One dead letter: headers, error, payload pretty-printed");
    dlq_show_cmd->add_option("id", dlq_show_id, "Dead letter id (conveyor dlq list)")->required();
    auto* dlq_stats_cmd = dlq_cmd->add_subcommand("stats", "Counts by family, type and reason, and the oldest");
    add_filters(dlq_stats_cmd);
    auto* dlq_groups_cmd = dlq_cmd->add_subcommand(
        "groups", "Dead letters grouped by error fingerprint (the error with ids, numbers and quoted values removed)");
    add_filters(dlq_groups_cmd);

    ReplayOptions replay_options;
    auto* dlq_replay_cmd = dlq_cmd->add_subcommand(
        "replay", "Publish matching dead letters again, a fresh attempt count each, marked replayed once confirmed");
    add_filters(dlq_replay_cmd);
    dlq_replay_cmd->add_option("--limit", replay_options.limit, "At most this many (default: every match)")
        ->check(CLI::Range(std::int64_t{1}, std::int64_t{100'000'000}));
    dlq_replay_cmd->add_option("--rate", replay_options.rate, "Jobs per second (default: as fast as confirms allow)")
        ->check(CLI::PositiveNumber);
    dlq_replay_cmd->add_flag("--dry-run", replay_options.dry_run, "Show what would be replayed; change nothing");
    dlq_replay_cmd->add_option("--to", replay_options.to_type, "Replay as this job type (e.g. a fixed version)");
    dlq_replay_cmd->add_flag("!--no-progress", replay_options.progress, "Do not show progress on stderr");
    dlq_replay_cmd
        ->add_option("--canary", replay_options.canary,
                     "Replay this many first and go on only if all of them succeed (they must be of a "
                     "type that runs in a transaction, whose inbox record shows it)")
        ->check(CLI::Range(std::int64_t{1}, std::int64_t{10'000}));
    std::string canary_timeout = "60s";
    dlq_replay_cmd->add_option("--canary-timeout", canary_timeout, "How long to wait for the canaries")
        ->check(duration_validator());
    bool purge_confirmed = false;
    auto* dlq_purge_cmd = dlq_cmd->add_subcommand("purge", "Delete matching dead letters for good (needs --yes)");
    add_filters(dlq_purge_cmd);
    dlq_purge_cmd->add_flag("--yes", purge_confirmed, "Really delete them");

    std::string schedules_pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    bool schedules_json = false;
    auto* schedules_cmd = app.add_subcommand("schedules", "The cron schedules the scheduler fires");
    schedules_cmd->require_subcommand(1);
    auto* schedules_list_cmd =
        schedules_cmd->add_subcommand("list", "Each schedule with its next fire time and how often it fired");
    schedules_list_cmd->add_option("--pg-url", schedules_pg_url, "PostgreSQL URL")
        ->envname("CONVEYOR_PG_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
    schedules_list_cmd->add_flag("--json", schedules_json, "One JSON object per line");

    auto* topology_cmd = app.add_subcommand("topology", "Manage the broker topology");
    topology_cmd->require_subcommand(1);
    auto* declare_cmd = topology_cmd->add_subcommand(
        "declare", "Declare exchange conveyor.jobs, a quorum queue and a dead-letter queue per family (idempotent)");
    declare_cmd->add_option("--families", families, "Comma-separated job families");

    QueuesOptions queues_options;
    PauseOptions pause_options;
    const auto queues_cmd = add_queues_commands(app, queues_options, pause_options);
    AuditOptions audit_options;
    bool workers_json = false;
    const auto fleet_cmd = add_fleet_commands(app, audit_options, workers_json);

    JobsListOptions jobs_options;
    std::string job_id;
    bool job_json = false;
    auto* jobs_cmd =
        app.add_subcommand("jobs", "Any job by id: its state, attempts and progress, from the job history");
    jobs_cmd->require_subcommand(1);
    jobs_cmd->fallthrough();
    jobs_cmd->add_option("--pg-url", jobs_options.pg_url, "PostgreSQL URL")
        ->envname("CONVEYOR_PG_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
    auto* jobs_show_cmd = jobs_cmd->add_subcommand("show", "One job: state, progress, every attempt with its error");
    jobs_show_cmd->add_option("id", job_id, "Job id")->required();
    jobs_show_cmd->add_flag("--json", job_json, "As one JSON object");
    auto* jobs_list_cmd = jobs_cmd->add_subcommand("list", "Jobs by their latest event, newest first");
    add_jobs_filters(*jobs_list_cmd, jobs_options);
    std::vector<std::string> cancel_job_ids;
    auto* jobs_cancel_cmd = jobs_cmd->add_subcommand(
        "cancel", "Cancel jobs wherever they are: scheduled, queued, waiting to retry, or running on any worker");
    jobs_cancel_cmd->add_option("id", cancel_job_ids, "Job ids")->required();
    jobs_cancel_cmd->add_flag("--json", job_json, "One JSON object per job");

    FlowApplyOptions flow_options;
    bool flow_show_json = false;
    auto* flow_cmd = app.add_subcommand(
        "flow", "Flow limits in force across every worker: per-key concurrency limits (one YAML file, versioned)");
    flow_cmd->require_subcommand(1);
    flow_cmd->fallthrough();
    flow_cmd->add_option("--pg-url", flow_options.pg_url, "PostgreSQL URL")
        ->envname("CONVEYOR_PG_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
    auto* flow_apply_cmd = flow_cmd->add_subcommand(
        "apply", "Check a flow file and put it in force as a new version (a bad file names its line, changes nothing)");
    flow_apply_cmd->add_option("file", flow_options.file, "The flow file (YAML)")->required();
    flow_apply_cmd->add_flag("--dry-run", flow_options.dry_run, "Only check the file");
    flow_apply_cmd->add_flag("--json", flow_options.json, "The new version as one JSON object");
    auto* flow_show_cmd =
        flow_cmd->add_subcommand("show", "The flow limits in force, their version and who applied it");
    flow_show_cmd->add_flag("--json", flow_show_json, "As one JSON object, with the file's text");

    TokenOptions token_options;
    auto* token_cmd = app.add_subcommand(
        "token",
        "Sign a JSON Web Token (HS256) for the API and the console with the secret the schedulers verify "
        "(--jwt-secret-file); prints it");
    token_cmd->add_option("--role", token_options.role, "viewer, operator or admin")
        ->required()
        ->check(CLI::IsMember({"viewer", "operator", "admin"}));
    token_cmd->add_option("--subject", token_options.subject, "Whom it names (sub): the user the audit log records")
        ->required();
    token_cmd->add_option("--ttl", token_options.ttl, "How long it stays valid (at most 30 days)")
        ->capture_default_str()
        ->check(duration_validator());
    token_cmd->add_option("--jwt-secret-file", token_options.secret_file, "File holding the HS256 secret")
        ->envname("CONVEYOR_JWT_SECRET_FILE")
        ->required()
        ->check(CLI::ExistingFile);
    token_cmd->add_option("--audience", token_options.audience, "Its aud")
        ->envname("CONVEYOR_JWT_AUDIENCE")
        ->capture_default_str();
    token_cmd->add_option("--issuer", token_options.issuer, "Its iss (default: none)")->envname("CONVEYOR_JWT_ISSUER");
    token_cmd->add_flag("--json", token_options.json, R"(As {"token", "expires_at"})");

    BatchOptions batch_options;
    EnqueueOptions batch_add_options;
    auto* batches_cmd = app.add_subcommand(
        "batches",
        "Batches of jobs: open one, add members in any number of calls, seal it; its callback job runs "
        "once every member has ended");
    batches_cmd->require_subcommand(1);
    batches_cmd->fallthrough();
    batches_cmd->add_option("--pg-url", batch_options.pg_url, "PostgreSQL URL")
        ->envname("CONVEYOR_PG_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
    batches_cmd->add_flag("--json", batch_options.json, "As one JSON object");
    auto* batches_open_cmd = batches_cmd->add_subcommand("open", "Open a batch; prints its id");
    batches_open_cmd->add_option("--id", batch_options.id, "Its id (default: batch-<uuid>), 1 to 128 bytes");
    batches_open_cmd->add_option("--description", batch_options.description, "What it is, for people");
    batches_open_cmd->add_option("--callback", batch_options.callback_type,
                                 "Job type enqueued once every member has ended after the seal");
    batches_open_cmd->add_option("--callback-payload", batch_options.callback_payload,
                                 "The callback's payload, a JSON object; it also gets \"batch\": {id, counts}");
    auto* batches_add_cmd = batches_cmd->add_subcommand(
        "add", "Publish jobs as members of an open batch (conveyor enqueue --batch; prints their ids or a count)");
    batches_add_cmd->add_option("batch", batch_add_options.batch, "The batch's id")->required();
    batches_add_cmd->add_option("type", batch_add_options.type, "Job type, <family>.<action>")->required();
    batches_add_cmd->add_option("--payload", batch_add_options.payload,
                                "Job payload, a JSON object ({{seq}}, "
                                "{{job_id}} as for enqueue)");
    batches_add_cmd->add_option("--count", batch_add_options.count, "How many jobs")
        ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{100'000'000}));
    batches_add_cmd->add_option("--priority", batch_add_options.priority, "high, normal or low")
        ->check(CLI::IsMember({"high", "normal", "low"}));
    batches_add_cmd->add_flag("!--no-progress", batch_add_options.progress, "Do not print progress on stderr");
    auto* batches_seal_cmd = batches_cmd->add_subcommand(
        "seal", "Seal a batch: it takes no more members, and finishes once they have all ended");
    batches_seal_cmd->add_option("id", batch_options.id, "The batch's id")->required();
    batches_seal_cmd
        ->add_option("--expect", batch_options.expected,
                     "How many members it has in all (needed for members published over AMQP by your "
                     "own code; default: those added here)")
        ->check(CLI::Range(std::int64_t{0}, std::int64_t{2'000'000'000}));
    auto* batches_show_cmd = batches_cmd->add_subcommand("show", "A batch's progress: its members by how they ended");
    batches_show_cmd->add_option("id", batch_options.id, "The batch's id")->required();

    auto* migrate_cmd = app.add_subcommand(
        "migrate",
        "Apply the database migrations not yet applied, each in a transaction (idempotent, safe to run "
        "from several pods at once)");
    // The schema's owner runs migrations; the services connect as the application role. Without an owner URL the
    // one URL is both (a superuser's, say).
    if (const char* url = std::getenv("CONVEYOR_PG_URL"); url != nullptr && *url != '\0') {
        migrate_options.pg_url = url;
    }
    migrate_cmd
        ->add_option("--pg-url", migrate_options.pg_url,
                     "PostgreSQL URL of the schema's owner (CONVEYOR_PG_OWNER_URL, else CONVEYOR_PG_URL)")
        ->envname("CONVEYOR_PG_OWNER_URL")
        ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
    migrate_cmd->add_option("--statement-timeout", statement_timeout, "Limit on each migration statement");

    std::vector<CLI::App*> added;
    added.reserve(commands.size());
    for (const auto& command : commands) {
        added.push_back(command.add(app));
    }

    try {
        app.parse(static_cast<int>(argv.size()), argv.data());
        (void)amqp::Url::parse(common.amqp_url);
        setup_logging(common.log_level, parse_log_format(common.log_format));
        if (*enqueue_cmd) {
            return enqueue(common, enqueue_options);
        }
        if (*dlq_cmd) {
            auto& filter = dlq_options.filter;
            auto value = [&](const std::string& name) -> std::optional<std::string> {
                const auto& text = dlq_filter_values[name];
                return text.empty() ? std::nullopt : std::optional(text);
            };
            filter.family = value("family");
            filter.type = value("type");
            filter.reason = value("reason");
            filter.error_contains = value("error");
            filter.since = value("since");
            filter.until = value("until");
            filter.job_id = value("job-id");
            filter.fingerprint = value("fingerprint");
            filter.state = dlq_state == "all" ? std::nullopt : std::optional(dlq_state);
            filter.validate();
            if (*dlq_list_cmd) {
                return dlq_list(dlq_options);
            }
            if (*dlq_show_cmd) {
                return dlq_show(dlq_options.pg_url, dlq_show_id);
            }
            if (*dlq_stats_cmd) {
                return dlq_stats(dlq_options);
            }
            if (*dlq_groups_cmd) {
                return dlq_groups(dlq_options);
            }
            if (*dlq_purge_cmd) {
                return dlq_purge(dlq_options, purge_confirmed);
            }
            if (*dlq_replay_cmd) {
                replay_options.canary_timeout = parse_duration(canary_timeout);
                replay_options.dlq = dlq_options;
                return dlq_replay(common, replay_options);
            }
        }
        if (*scheduled_list_cmd) {
            return list_scheduled(scheduled_options);
        }
        if (*scheduled_cancel_cmd || *scheduled_run_cmd) {
            return change_scheduled(scheduled_options.pg_url, cancel_ids, scheduled_run_cmd->parsed());
        }
        if (*schedules_list_cmd) {
            return list_schedules(schedules_pg_url, schedules_json);
        }
        if (*declare_cmd) {
            return declare_topology(common, families);
        }
        if (*queues_cmd.pause || *queues_cmd.resume) {
            pause_options.pg_url = queues_options.pg_url;
            return set_queue_paused(common, pause_options, queues_cmd.pause->parsed());
        }
        if (*queues_cmd.show) {
            return show_queues(common, queues_options);
        }
        if (*fleet_cmd.audit) {
            return audit_list(audit_options);
        }
        if (*fleet_cmd.workers) {
            return workers_list(audit_options.pg_url, workers_json);
        }
        if (*jobs_show_cmd) {
            return jobs_show(jobs_options.pg_url, job_id, job_json);
        }
        if (*jobs_list_cmd) {
            return jobs_list(jobs_options);
        }
        if (*jobs_cancel_cmd) {
            return jobs_cancel(common, jobs_options.pg_url, cancel_job_ids, job_json);
        }
        if (*flow_apply_cmd) {
            return flow_apply(flow_options);
        }
        if (*flow_show_cmd) {
            return flow_show(flow_options.pg_url, flow_show_json);
        }
        if (*token_cmd) {
            return sign_token(token_options);
        }
        if (*batches_open_cmd) {
            return batches_open(batch_options);
        }
        if (*batches_add_cmd) {
            batch_add_options.pg_url = batch_options.pg_url;
            return enqueue(common, batch_add_options);
        }
        if (*batches_seal_cmd) {
            return batches_seal(batch_options);
        }
        if (*batches_show_cmd) {
            return batches_show(batch_options);
        }
        if (*migrate_cmd) {
            migrate_options.statement_timeout = parse_duration(statement_timeout);
            return migrate(migrate_options, std::move(migrations));
        }
        for (std::size_t index = 0; index < commands.size(); ++index) {
            if (added[index]->parsed()) {
                return commands[index].run();
            }
        }
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? kOk : kUsage;
    } catch (const std::invalid_argument& e) {
        std::cerr << "conveyor: " << e.what() << "\nRun with --help for more information.\n";
        return kUsage;
    }
    return kUsage;
}

}  // namespace conveyor::cli
