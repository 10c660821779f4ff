#include <fmt/format.h>
#include <simdjson.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/uuid/random_generator.hpp>
#include <boost/uuid/uuid_io.hpp>
#include <cstdio>
#include <iostream>

#include "commands.hpp"
#include "conveyor/cli/cli.hpp"
#include "conveyor/core/envelope.hpp"
#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/json.hpp"
#include "conveyor/core/logging.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::cli {
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

/// The payload of job number `index`: "{{seq}}" becomes the number and "{{job_id}}" the job's id, so one
/// command can publish distinct jobs (e.g. orders with their own ids).
std::string expand_payload(const std::string& payload, std::uint64_t index, std::string_view job_id) {
    if (payload.find("{{") == std::string::npos) {
        return payload;
    }
    std::string expanded;
    std::string_view rest = payload;
    while (!rest.empty()) {
        const auto open = rest.find("{{");
        expanded += rest.substr(0, open);
        if (open == std::string_view::npos) {
            break;
        }
        rest.remove_prefix(open);
        if (rest.starts_with("{{seq}}")) {
            expanded += std::to_string(index);
            rest.remove_prefix(7);
        } else if (rest.starts_with("{{job_id}}")) {
            expanded += job_id;
            rest.remove_prefix(10);
        } else {
            expanded += "{{";
            rest.remove_prefix(2);
        }
    }
    return expanded;
}

// Below this many jobs a progress line is noise.
constexpr std::uint64_t kProgressThreshold = 1000;
// Up to this many jobs the ids are printed; above it, a count.
constexpr std::uint64_t kMaxPrintedIds = 100;

struct Run {
    const EnqueueOptions& options;
    amqp::Connection& connection;
    amqp::Properties properties;
    boost::uuids::random_generator uuids;
    Clock::time_point started = Clock::now();
    std::uint64_t next = 0;
    std::uint64_t confirmed = 0;
    std::uint64_t failed = 0;
    std::string first_error;
    std::vector<std::string> ids;
};

std::int64_t epoch_millis() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

asio::awaitable<void> publisher(Run& run) {
    asio::steady_timer pacing(co_await asio::this_coro::executor);
    while (run.next < run.options.count) {
        const auto index = run.next++;
        if (run.options.rate > 0) {
            pacing.expires_at(run.started + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                                                static_cast<double>(index) / run.options.rate)));
            co_await pacing.async_wait(asio::use_awaitable);
        }
        amqp::Message message;
        message.exchange = topology::kJobsExchange;
        message.routing_key = run.options.type;
        message.properties = run.properties;
        if (run.options.job_id.empty()) {
            message.properties.message_id = boost::uuids::to_string(run.uuids());
        } else {
            message.properties.message_id = run.options.job_id;
        }
        set_enqueued_at(message.properties, epoch_millis());
        message.body = expand_payload(run.options.payload, index, message.properties.message_id);
        auto id = message.properties.message_id;
        auto [error] = co_await run.connection.async_publish(std::move(message), asio::as_tuple(asio::use_awaitable));
        if (error) {
            if (run.failed++ == 0) {
                run.first_error = error.message();
            }
            continue;
        }
        ++run.confirmed;
        if (run.options.count <= kMaxPrintedIds) {
            run.ids[index] = std::move(id);
        }
    }
}

asio::awaitable<void> report_progress(Run& run, bool tty) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    while (run.confirmed + run.failed < run.options.count) {
        timer.expires_after(tty ? std::chrono::milliseconds(250) : std::chrono::seconds(2));
        co_await timer.async_wait(asio::use_awaitable);
        const auto done = run.confirmed + run.failed;
        const double seconds = std::chrono::duration<double>(Clock::now() - run.started).count();
        const auto line =
            fmt::format("enqueue: {}/{} confirmed ({:.0f}%), {} failed, {:.0f} jobs/s", run.confirmed,
                        run.options.count, 100.0 * static_cast<double>(done) / static_cast<double>(run.options.count),
                        run.failed, static_cast<double>(done) / std::max(seconds, 1e-9));
        std::cerr << (tty ? "\r" : "") << line << (tty ? "" : "\n") << std::flush;
    }
    if (tty) {
        std::cerr << '\n';
    }
}

}  // namespace

int enqueue(const CommonOptions& common, const EnqueueOptions& options) {
    if (!is_valid_job_type(options.type)) {
        std::cerr << fmt::format("conveyor enqueue: '{}' is not a job type; expected <family>.<action>\n",
                                 options.type);
        return kUsage;
    }
    const auto family = options.type.substr(0, options.type.find('.'));
    const auto& families = topology::default_families();
    if (std::find(families.begin(), families.end(), family) == families.end()) {
        std::cerr << fmt::format("conveyor enqueue: unknown job family '{}' (known: {})\n", family,
                                 fmt::join(families, ", "));
        return kUsage;
    }
    simdjson::dom::parser parser;
    const auto first_payload = expand_payload(options.payload, 0, "job-id");
    auto parsed = parser.parse(first_payload);
    if (parsed.error() != simdjson::SUCCESS) {
        std::cerr << fmt::format("conveyor enqueue: --payload is not valid JSON: {}\n",
                                 simdjson::error_message(parsed.error()));
        return kUsage;
    }
    if (!parsed.value_unsafe().is_object()) {
        std::cerr << "conveyor enqueue: --payload must be a JSON object\n";
        return kUsage;
    }
    if (!options.unique_key.empty() && options.count != 1) {
        std::cerr << "conveyor enqueue: --unique-key needs --count 1 (the others would all be deduplicated)\n";
        return kUsage;
    }
    if (options.unique_key.size() > job_headers::kMaxUniqueKeyBytes) {
        std::cerr << fmt::format("conveyor enqueue: --unique-key is longer than {} bytes\n",
                                 job_headers::kMaxUniqueKeyBytes);
        return kUsage;
    }
    const bool through_database = !options.at.empty() || !options.in.empty() || !options.idempotency_key.empty();
    if (const auto violation = json::check(parsed.value_unsafe(), {.allow_nul = !through_database})) {
        std::cerr << fmt::format("conveyor enqueue: --payload: {}\n", violation->message);
        return kUsage;
    }
    if (through_database) {
        if (!options.job_id.empty()) {
            std::cerr << "conveyor enqueue: --job-id cannot be combined with --at, --in or --idempotency-key "
                         "(conveyor.enqueue() assigns the id)\n";
            return kUsage;
        }
        if (options.payload.find("{{job_id}}") != std::string::npos) {
            std::cerr << "conveyor enqueue: {{job_id}} is not available with --at, --in or --idempotency-key\n";
            return kUsage;
        }
        if (!options.idempotency_key.empty() && options.count != 1) {
            std::cerr << "conveyor enqueue: --idempotency-key needs --count 1 (one key names one job)\n";
            return kUsage;
        }
        if (options.rate > 0) {
            std::cerr << "conveyor enqueue: --rate paces immediate publishing; scheduled jobs publish when due\n";
            return kUsage;
        }
        std::vector<std::string> payloads;
        payloads.reserve(options.count);
        for (std::uint64_t index = 0; index < options.count; ++index) {
            payloads.push_back(expand_payload(options.payload, index, {}));
        }
        return enqueue_delayed(options, payloads);
    }
    if (!options.job_id.empty() && options.count != 1) {
        std::cerr << "conveyor enqueue: --job-id needs --count 1 (job ids are unique)\n";
        return kUsage;
    }
    if (options.job_id.size() > kMaxJobIdBytes) {
        std::cerr << fmt::format("conveyor enqueue: --job-id is longer than {} bytes\n", kMaxJobIdBytes);
        return kUsage;
    }

    if (!options.batch.empty()) {
        // Counted before they are published, so the batch cannot finish without them.
        const int counted = count_batch_members(options, static_cast<std::int64_t>(options.count));
        if (counted != kOk) {
            return counted;
        }
    }
    amqp::Connection connection(cli_connection_settings(common, "conveyor enqueue"), {});
    Run run{options, connection, {}, {}, Clock::now(), 0, 0, 0, {}, {}};
    run.properties.content_type = "application/json";
    run.properties.delivery_mode = 2;
    run.properties.correlation_id = options.correlation_id;
    if (options.priority != topology::band_name(topology::Band::normal)) {
        amqp::set_header(run.properties.headers, topology::kPriorityHeader, options.priority);
    }
    if (!options.unique_key.empty()) {
        amqp::set_header(run.properties.headers, job_headers::kUniqueKey, options.unique_key);
        amqp::set_header(run.properties.headers, job_headers::kUniqueFor, options.unique_for);
    }
    if (!options.batch.empty()) {
        amqp::set_header(run.properties.headers, job_headers::kBatch, options.batch);
    }
    if (options.count <= kMaxPrintedIds) {
        run.ids.resize(options.count);
    }

    const int exit_code = with_connection(connection, "enqueue", [&](asio::io_context& io) -> asio::awaitable<int> {
        run.started = Clock::now();
        if (options.progress && options.count >= kProgressThreshold) {
            asio::co_spawn(io, report_progress(run, isatty(STDERR_FILENO) != 0), log_failure("progress"));
        }
        const auto publishers = std::min<std::uint64_t>(options.window, options.count);
        for (std::uint64_t i = 0; i < publishers; ++i) {
            asio::co_spawn(io, publisher(run), log_failure("publisher"));
        }
        co_return kOk;
    });
    if (exit_code != kOk) {
        return exit_code;
    }

    const double seconds = std::chrono::duration<double>(Clock::now() - run.started).count();
    if (options.count <= kMaxPrintedIds) {
        for (const auto& id : run.ids) {
            if (!id.empty()) {
                std::cout << id << '\n';
            }
        }
    } else {
        std::cout << fmt::format("{} jobs enqueued\n", run.confirmed);
    }
    if (options.count >= kProgressThreshold || run.failed > 0) {
        std::cerr << fmt::format("conveyor enqueue: {} confirmed, {} failed in {:.2f} s ({:.0f} jobs/s)\n",
                                 run.confirmed, run.failed, seconds,
                                 static_cast<double>(run.confirmed) / std::max(seconds, 1e-9));
    }
    if (run.failed > 0) {
        std::cerr << fmt::format("conveyor enqueue: {} publishes failed; first error: {}\n", run.failed,
                                 run.first_error);
        if (!options.batch.empty()) {
            // Not in the queue: the batch must not wait for them (a publish whose confirm was lost with the
            // connection may have arrived after all, and then counts beyond what was added).
            count_batch_members(options, -static_cast<std::int64_t>(run.failed));
        }
        return kFailed;
    }
    return kOk;
}

}  // namespace conveyor::cli
