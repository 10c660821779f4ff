#include <fmt/format.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <csignal>
#include <iostream>

#include "commands.hpp"
#include "conveyor/cli/cli.hpp"
#include "conveyor/core/config.hpp"
#include "conveyor/core/envelope.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::cli {
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

// Dead letters claimed, published and marked per transaction: a crash repeats at most this many (with their
// original job ids, which the receiving jobs' inboxes absorb).
constexpr std::int64_t kChunk = 100;
// Headers that describe the failure, not the job: a replay starts it afresh.
constexpr std::array<std::string_view, 10> kFailureHeaders = {
    "x-conveyor-attempt",   "x-conveyor-attempts", "x-conveyor-error",          "x-conveyor-reason",
    "x-conveyor-failed-at", "x-conveyor-worker",   "x-conveyor-original-queue", "x-conveyor-original-routing-key",
    "x-conveyor-retry-at",  "x-delivery-count"};

std::string decode_hex(std::string_view text) {
    if (text.starts_with("\\x")) {
        text.remove_prefix(2);
    }
    std::string bytes;
    bytes.reserve(text.size() / 2);
    auto nibble = [](char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; };
    for (std::size_t i = 0; i + 1 < text.size(); i += 2) {
        bytes += static_cast<char>((nibble(text[i]) << 4) | nibble(text[i + 1]));
    }
    return bytes;
}

/// The original headers (a flat JSON object of strings, integers, booleans, numbers) without the failure's.
amqp::Headers replay_headers(std::string_view json) {
    amqp::Headers headers;
    simdjson::dom::parser parser;
    simdjson::dom::object object;
    if (parser.parse(json.data(), json.size()).get(object) != simdjson::SUCCESS) {
        return headers;
    }
    for (const auto field : object) {
        const std::string name(field.key);
        if (std::find(kFailureHeaders.begin(), kFailureHeaders.end(), name) != kFailureHeaders.end()) {
            continue;
        }
        if (field.value.is_string()) {
            amqp::set_header(headers, name, std::string(field.value.get_string().value_unsafe()));
        } else if (field.value.is_int64()) {
            amqp::set_header(headers, name, field.value.get_int64().value_unsafe());
        } else if (field.value.is_bool()) {
            amqp::set_header(headers, name, field.value.get_bool().value_unsafe());
        } else if (field.value.is_double()) {
            amqp::set_header(headers, name, field.value.get_double().value_unsafe());
        }
    }
    return headers;
}

std::int64_t epoch_millis() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string operator_name() {
    if (const char* user = std::getenv("USER"); user != nullptr && *user != '\0') {
        return fmt::format("{}@{}", user, default_instance_name());
    }
    return default_instance_name();
}

struct Progress {
    std::int64_t total = 0;
    std::int64_t replayed = 0;
    Clock::time_point started = Clock::now();
    bool tty = false;

    void show() const {
        const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
        const auto done = total == 0 ? 1.0 : static_cast<double>(replayed) / static_cast<double>(total);
        const int width = 30;
        const auto filled = static_cast<int>(done * width);
        const auto line = fmt::format("replay [{}{}] {}/{} ({:.0f}%), {:.0f} jobs/s", std::string(filled, '#'),
                                      std::string(width - filled, '.'), replayed, total, 100 * done,
                                      static_cast<double>(replayed) / std::max(seconds, 1e-9));
        std::cerr << (tty ? "\r" : "") << line << (tty ? "" : "\n") << std::flush;
    }
};

}  // namespace

int dlq_replay(const CommonOptions& common, const ReplayOptions& options) {
    if (!options.to_type.empty() && !is_valid_job_type(options.to_type)) {
        std::cerr << fmt::format("conveyor dlq replay: --to '{}' is not a job type\n", options.to_type);
        return kUsage;
    }
    auto filter = options.dlq.filter;
    filter.state = "dead";
    amqp::Connection connection(cli_connection_settings(common, "conveyor dlq replay"), {});
    Progress progress;
    progress.tty = isatty(STDERR_FILENO) != 0;
    std::string failure;
    bool interrupted = false;
    const auto by = operator_name();

    const int exit_code = with_connection(connection, "dlq replay", [&](asio::io_context& io) -> asio::awaitable<int> {
        pg::Settings database;
        database.url = options.dlq.pg_url;
        database.pool_size = 2;
        database.application_name = "conveyor dlq replay";
        pg::Pool pool(io.get_executor(), database);
        asio::signal_set signals(io, SIGINT, SIGTERM);
        signals.async_wait([&](boost::system::error_code error, int) {
            if (!error) {
                interrupted = true;
            }
        });
        const auto counted = co_await dead_letters::count(pool, filter);
        progress.total = options.limit > 0 ? std::min(counted, options.limit) : counted;
        if (options.dry_run) {
            std::cout << fmt::format("would replay {} dead letters{}:\n", progress.total,
                                     options.to_type.empty() ? "" : " as " + options.to_type);
            const auto rows = co_await dead_letters::stats(pool, filter);
            for (int row = 0; row < rows.rows(); ++row) {
                std::cout << fmt::format("  {:>8}  {:<22}  {}\n", rows.text(row, 3), rows.text(row, 1),
                                         rows.text(row, 2));
            }
            signals.cancel();
            co_return kOk;
        }
        asio::steady_timer pacing(co_await asio::this_coro::executor);
        const auto started_at = co_await pool.query("SELECT now()::text");
        const std::string since(started_at.text(0, 0));
        std::int64_t last_id = 0;
        bool canaries_pending = options.canary > 0;
        while (progress.replayed < progress.total && !interrupted && failure.empty()) {
            const auto wanted =
                std::min(canaries_pending ? options.canary : kChunk, progress.total - progress.replayed);
            auto transaction = co_await pool.begin();
            const auto rows = co_await dead_letters::claim(transaction, filter, last_id, wanted);
            if (rows.rows() == 0) {
                co_await transaction.commit();
                break;
            }
            std::vector<std::string> replayed;
            for (int row = 0; row < rows.rows() && failure.empty() && !interrupted; ++row) {
                if (options.rate > 0) {
                    pacing.expires_at(progress.started +
                                      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                                          static_cast<double>(progress.replayed) / options.rate)));
                    co_await pacing.async_wait(asio::as_tuple(asio::use_awaitable));
                }
                const auto id = rows.text(row, 0);
                amqp::Message message;
                message.exchange = topology::kJobsExchange;
                message.routing_key = options.to_type.empty() ? std::string(rows.text(row, 2)) : options.to_type;
                message.body = decode_hex(rows.text(row, 6));
                auto& properties = message.properties;
                properties.content_type = "application/json";
                properties.message_id = rows.text(row, 1);
                properties.correlation_id = rows.is_null(row, 4) ? std::string() : std::string(rows.text(row, 4));
                properties.headers = replay_headers(rows.text(row, 5));
                const auto now_ms = epoch_millis();
                properties.timestamp = static_cast<std::uint64_t>(now_ms / 1000);
                amqp::set_header(properties.headers, "x-conveyor-enqueued-at", now_ms);
                amqp::set_header(properties.headers, "x-conveyor-replayed-at",
                                 utc_timestamp(std::chrono::system_clock::now()));
                amqp::set_header(properties.headers, "x-conveyor-replayed-by", by);
                amqp::set_header(properties.headers, "x-conveyor-replayed-from", std::string(id));
                auto [error] =
                    co_await connection.async_publish(std::move(message), asio::as_tuple(asio::use_awaitable));
                if (error) {
                    failure = fmt::format("dead letter {} (job {}): {}", id, rows.text(row, 1), error.message());
                    break;
                }
                replayed.emplace_back(id);
                last_id = std::stoll(std::string(id));
                ++progress.replayed;
            }
            co_await dead_letters::mark_replayed(transaction, replayed, by, options.to_type);
            co_await transaction.commit();
            if (options.progress && progress.total >= 100) {
                progress.show();
            }
            if (canaries_pending && failure.empty()) {
                canaries_pending = false;
                std::vector<std::string> job_ids;
                for (int row = 0; row < static_cast<int>(replayed.size()); ++row) {
                    job_ids.emplace_back(rows.text(row, 1));
                }
                std::cerr << fmt::format("conveyor dlq replay: {} canaries replayed; waiting up to {} s for them\n",
                                         job_ids.size(), options.canary_timeout.count() / 1000);
                const auto deadline = Clock::now() + options.canary_timeout;
                dead_letters::Outcomes outcome;
                while (Clock::now() < deadline && !interrupted) {
                    outcome = co_await dead_letters::outcomes(pool, job_ids, since);
                    if (outcome.failed > 0 || outcome.succeeded >= static_cast<std::int64_t>(job_ids.size())) {
                        break;
                    }
                    pacing.expires_after(std::chrono::milliseconds(500));
                    co_await pacing.async_wait(asio::as_tuple(asio::use_awaitable));
                }
                if (outcome.failed > 0) {
                    failure = fmt::format("{} of {} canaries failed again ({})", outcome.failed, job_ids.size(),
                                          outcome.example_error);
                } else if (outcome.succeeded < static_cast<std::int64_t>(job_ids.size())) {
                    failure = fmt::format(
                        "only {} of {} canaries finished within {} s (a job type without a "
                        "transaction leaves no trace to check)",
                        outcome.succeeded, job_ids.size(), options.canary_timeout.count() / 1000);
                } else {
                    std::cerr << fmt::format("conveyor dlq replay: all {} canaries succeeded; replaying the rest\n",
                                             job_ids.size());
                }
            }
        }
        signals.cancel();
        co_return failure.empty() ? (interrupted ? 130 : kOk) : kFailed;
    });
    if (options.progress && progress.total >= 100 && progress.tty) {
        std::cerr << '\n';
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - progress.started).count();
    if (!options.dry_run && (exit_code == kOk || exit_code == kFailed || exit_code == 130)) {
        std::cout << fmt::format("replayed {} of {} dead letters in {:.1f} s ({:.0f} jobs/s){}\n", progress.replayed,
                                 progress.total, seconds,
                                 static_cast<double>(progress.replayed) / std::max(seconds, 1e-9),
                                 interrupted ? "; interrupted, the rest are still dead letters" : "");
    }
    if (!failure.empty()) {
        std::cerr << fmt::format("conveyor dlq replay: stopped: {}; the rest are still dead letters\n", failure);
    }
    return exit_code;
}

}  // namespace conveyor::cli
