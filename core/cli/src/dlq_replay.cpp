#include <fmt/format.h>
#include <unistd.h>

#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <iostream>

#include "commands.hpp"
#include "conveyor/cli/cli.hpp"
#include "conveyor/core/config.hpp"
#include "conveyor/core/envelope.hpp"

namespace conveyor::cli {
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

std::string operator_name() {
    if (const char* user = std::getenv("USER"); user != nullptr && *user != '\0') {
        return fmt::format("{}@{}", user, default_instance_name());
    }
    return default_instance_name();
}

namespace {

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
    dead_letters::ReplayRequest request;
    request.filter = options.dlq.filter;
    request.filter.state = "dead";
    request.limit = options.limit;
    request.rate = options.rate;
    request.to_type = options.to_type;
    request.by = operator_name();
    request.canary = options.canary;
    request.canary_timeout = options.canary_timeout;
    amqp::Connection connection(cli_connection_settings(common, "conveyor dlq replay"), {});
    Progress progress;
    progress.tty = isatty(STDERR_FILENO) != 0;
    bool interrupted = false;
    dead_letters::ReplayResult result;

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
        int code = kOk;
        try {
            if (options.dry_run) {
                const auto total = co_await dead_letters::count_replayable(pool, request);
                std::cout << fmt::format("would replay {} dead letters{}:\n", total,
                                         options.to_type.empty() ? "" : " as " + options.to_type);
                const auto rows = co_await dead_letters::stats(pool, request.filter);
                for (int row = 0; row < rows.rows(); ++row) {
                    std::cout << fmt::format("  {:>8}  {:<22}  {}\n", rows.text(row, 3), rows.text(row, 1),
                                             rows.text(row, 2));
                }
            } else {
                dead_letters::ReplayHooks hooks;
                hooks.stop_requested = [&] { return interrupted; };
                hooks.on_progress = [&](const dead_letters::ReplayResult& now) {
                    progress.total = now.matched;
                    progress.replayed = now.replayed;
                    if (options.progress && now.matched >= 100) {
                        progress.show();
                    }
                };
                hooks.on_note = [](const std::string& note) { std::cerr << "conveyor dlq replay: " << note << '\n'; };
                result = co_await dead_letters::replay(pool, connection, request, hooks);
                progress.total = result.matched;
                progress.replayed = result.replayed;
                if (!result.failure.empty()) {
                    code = kFailed;
                } else if (interrupted) {
                    code = kInterrupted;
                }
            }
        } catch (const pg::Error& e) {
            // What was committed before the failure stays replayed; the rest are still dead letters.
            code = report_database_error("dlq replay", options.dlq.pg_url, e);
        }
        signals.cancel();
        co_return code;
    });
    if (options.progress && progress.total >= 100 && progress.tty) {
        std::cerr << '\n';
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - progress.started).count();
    if (!options.dry_run && (exit_code == kOk || exit_code == kFailed || exit_code == kInterrupted)) {
        std::cout << fmt::format("replayed {} of {} dead letters in {:.2f} s ({:.0f} jobs/s){}\n", progress.replayed,
                                 progress.total, seconds,
                                 static_cast<double>(progress.replayed) / std::max(seconds, 1e-9),
                                 interrupted ? "; interrupted, the rest are still dead letters" : "");
    }
    if (!result.failure.empty()) {
        std::cerr << fmt::format("conveyor dlq replay: stopped: {}; the rest are still dead letters\n", result.failure);
    }
    return exit_code;
}

}  // namespace conveyor::cli
