#include <fmt/format.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <cctype>
#include <iostream>

#include "commands.hpp"
#include "conveyor/admin/scheduled_jobs.hpp"
#include "conveyor/cli/cli.hpp"
#include "conveyor/core/config.hpp"
#include "conveyor/core/pg.hpp"
#include "conveyor/core/redaction.hpp"

namespace conveyor::cli {
namespace asio = boost::asio;

namespace {

// Rows per INSERT when one command schedules many jobs.
constexpr std::size_t kInsertChunk = 1000;

std::string or_dash(const pg::Result& rows, int row, int column) {
    return rows.is_null(row, column) ? std::string("-") : std::string(rows.text(row, column));
}

}  // namespace

std::string json_string(std::string_view text) {
    std::string quoted = "\"";
    for (const char c : text) {
        switch (c) {
            case '"':
                quoted += "\\\"";
                break;
            case '\\':
                quoted += "\\\\";
                break;
            case '\n':
                quoted += "\\n";
                break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    quoted += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
                } else {
                    quoted += c;
                }
        }
    }
    return quoted + "\"";
}

std::string json_or_null(const pg::Result& rows, int row, int column) {
    return rows.is_null(row, column) ? std::string("null") : json_string(rows.text(row, column));
}

/// Runs `body` against the database; a database error is printed and becomes the exit code (3 unreachable, 2 bad
/// input, 1 otherwise).
int report_database_error(std::string_view command, const std::string& pg_url, const pg::Error& error) {
    std::cerr << fmt::format("conveyor {}: {} ({})\n", command, error.what(), redacted_url(pg_url));
    if (error.sqlstate().starts_with("08")) {
        return kUnavailable;
    }
    // Class 22 is bad data (an --at or --since PostgreSQL cannot read, a payload that is not JSON), P0002 and 55000
    // what Conveyor's functions raise for something named that does not exist or is in the wrong state (a batch
    // unknown or sealed): usage errors.
    const auto& code = error.sqlstate();
    return code.starts_with("22") || code == "P0002" || code == "55000" ? kUsage : kFailed;
}

pg::Settings cli_database_settings(const std::string& pg_url, std::string_view command) {
    pg::Settings settings;
    settings.url = pg_url;
    settings.pool_size = 1;
    settings.application_name = fmt::format("conveyor {}", command);
    return settings;
}

int with_database(const std::string& pg_url, std::string_view command, const DatabaseBody& body) {
    asio::io_context io;
    pg::Pool pool(io.get_executor(), cli_database_settings(pg_url, command));
    int exit_code = kOk;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            try {
                exit_code = co_await body(pool);
            } catch (const pg::Error& e) {
                exit_code = report_database_error(command, pg_url, e);
            } catch (const std::invalid_argument& e) {
                std::cerr << fmt::format("conveyor {}: {}\n", command, e.what());
                exit_code = kUsage;
            }
        },
        asio::detached);
    io.run();
    return exit_code;
}

int enqueue_delayed(const EnqueueOptions& options, const std::vector<std::string>& payloads) {
    std::string run_at = options.at;
    if (!options.in.empty()) {
        const auto delay = parse_duration(options.in);
        if (delay > scheduled_jobs::kMaxAhead) {
            std::cerr << "conveyor enqueue: --in must be at most 10 years\n";
            return kUsage;
        }
        run_at = utc_timestamp(std::chrono::system_clock::now() + delay);
    } else if (run_at.empty()) {
        // --idempotency-key alone: due now, through conveyor.enqueue() for its key.
        run_at = utc_timestamp(std::chrono::system_clock::now());
    }
    return with_database(options.pg_url, "enqueue", [&](pg::Pool& pool) -> asio::awaitable<int> {
        std::vector<std::string> ids;
        std::string due_text;
        for (std::size_t start = 0; start < payloads.size(); start += kInsertChunk) {
            const auto end = std::min(payloads.size(), start + kInsertChunk);
            const auto chunk =
                pg::text_array(std::span<const std::string>(payloads.begin() + static_cast<std::ptrdiff_t>(start),
                                                            payloads.begin() + static_cast<std::ptrdiff_t>(end)));
            const std::optional<std::string> key =
                options.idempotency_key.empty() ? std::nullopt : std::optional(options.idempotency_key);
            const std::optional<std::string> unique_key =
                options.unique_key.empty() ? std::nullopt : std::optional(options.unique_key);
            const std::optional<std::string> correlation =
                options.correlation_id.empty() ? std::nullopt : std::optional(options.correlation_id);
            // Members join their batch in the transaction that stores them: a refused chunk adds none.
            const auto inserted = co_await pool.query(
                "SELECT conveyor.enqueue($1, payload::jsonb, $3::timestamptz, $4, $5, NULL, 'cli', $6, $7, "
                "$8::integer, nullif($9, '')), "
                "to_char($3::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') "
                "FROM unnest($2::text[]) WITH ORDINALITY AS p(payload, n) ORDER BY n",
                options.type, chunk, run_at, key, correlation, options.priority, unique_key, options.unique_for,
                options.batch);
            for (int row = 0; row < inserted.rows(); ++row) {
                ids.emplace_back(inserted.text(row, 0));
                due_text = inserted.text(row, 1);
            }
        }
        if (ids.size() <= 100) {
            for (const auto& id : ids) {
                std::cout << id << '\n';
            }
        } else {
            std::cout << fmt::format("{} jobs scheduled\n", ids.size());
        }
        std::cerr << fmt::format(
            "conveyor enqueue: {} {} scheduled for {} (a conveyor-scheduler publishes {} when "
            "due)\n",
            ids.size(), ids.size() == 1 ? "job" : "jobs", due_text, ids.size() == 1 ? "it" : "them");
        co_return kOk;
    });
}

int list_scheduled(const ScheduledListOptions& options) {
    if (options.state != "all" && !scheduled_jobs::is_state(options.state)) {
        std::cerr << fmt::format(
            "conveyor scheduled list: --state must be pending, published, cancelled, failed or all, not '{}'\n",
            options.state);
        return kUsage;
    }
    return with_database(options.pg_url, "scheduled list", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const std::optional<std::string> state = options.state == "all" ? std::nullopt : std::optional(options.state);
        const std::optional<std::string> type = options.type.empty() ? std::nullopt : std::optional(options.type);
        scheduled_jobs::Filter filter;
        filter.state = state;
        filter.type = type;
        filter.limit = static_cast<std::int64_t>(options.limit);
        const auto rows = co_await scheduled_jobs::list(pool, filter);
        if (!options.json) {
            std::cout << fmt::format("{:<36}  {:<22}  {:<24}  {:<9}  {:<8}  {}\n", "ID", "TYPE", "RUN AT (UTC)",
                                     "STATE", "PRIORITY", "SOURCE");
        }
        for (int row = 0; row < rows.rows(); ++row) {
            if (options.json) {
                std::cout
                    << fmt::format(
                           R"({{"id":{},"type":{},"run_at":{},"state":{},"source":{},"idempotency_key":{},"correlation_id":{},"payload":{},"error":{},"priority":{}}})",
                           json_string(rows.text(row, 0)), json_string(rows.text(row, 1)),
                           json_string(rows.text(row, 2)), json_string(rows.text(row, 3)),
                           json_string(rows.text(row, 4)), json_or_null(rows, row, 5), json_or_null(rows, row, 6),
                           rows.text(row, 7), json_or_null(rows, row, 8), json_string(rows.text(row, 9)))
                    << '\n';
            } else {
                std::cout << fmt::format("{:<36}  {:<22}  {:<24}  {:<9}  {:<8}  {}\n", rows.text(row, 0),
                                         rows.text(row, 1), rows.text(row, 2), rows.text(row, 3), rows.text(row, 9),
                                         rows.text(row, 4));
            }
        }
        if (!options.json && static_cast<std::size_t>(rows.rows()) == options.limit) {
            std::cerr << fmt::format("conveyor scheduled list: showing the first {}; use --limit for more\n",
                                     options.limit);
        }
        co_return kOk;
    });
}

int change_scheduled(const std::string& pg_url, const std::vector<std::string>& ids, bool run_now) {
    const auto* command = run_now ? "scheduled run" : "scheduled cancel";
    for (const auto& id : ids) {
        if (!scheduled_jobs::is_job_id(id)) {
            std::cerr << fmt::format("conveyor {}: '{}' is not a job id (a UUID)\n", command, id);
            return kUsage;
        }
    }
    return with_database(pg_url, command, [&](pg::Pool& pool) -> asio::awaitable<int> {
        int exit_code = kOk;
        const auto by = operator_name();
        for (const auto& id : ids) {
            scheduled_jobs::ChangeOutcome outcome;
            if (run_now) {
                outcome = co_await scheduled_jobs::run_now(pool, id, by);
            } else {
                outcome = co_await scheduled_jobs::cancel(pool, id, by);
            }
            if (outcome.result == scheduled_jobs::Change::not_found) {
                std::cerr << fmt::format("conveyor {}: no scheduled job {}\n", command, id);
                exit_code = kFailed;
            } else if (outcome.result == scheduled_jobs::Change::done) {
                std::cout << fmt::format("{} {}\n", run_now ? "due now:" : "cancelled", id);
            } else {
                std::cerr << fmt::format("conveyor {}: {} is {}, not pending; nothing to change\n", command, id,
                                         outcome.state);
                exit_code = kFailed;
            }
        }
        co_return exit_code;
    });
}

int list_schedules(const std::string& pg_url, bool json) {
    return with_database(pg_url, "schedules list", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto rows = co_await scheduled_jobs::list_schedules(pool);
        if (!json) {
            std::cout << fmt::format("{:<24}  {:<18}  {:<16}  {:<22}  {:<20}  {:>7}  {:>6}\n", "NAME", "CRON",
                                     "TIMEZONE", "TYPE", "NEXT FIRE (UTC)", "FIRED", "MISSED");
        }
        for (int row = 0; row < rows.rows(); ++row) {
            if (json) {
                std::cout
                    << fmt::format(
                           R"({{"name":{},"cron":{},"timezone":{},"type":{},"next_fire_at":{},"last_fire_at":{},"fired":{},"misfired":{},"misfire":{},"payload":{}}})",
                           json_string(rows.text(row, 0)), json_string(rows.text(row, 1)),
                           json_string(rows.text(row, 2)), json_string(rows.text(row, 3)), json_or_null(rows, row, 6),
                           json_string(rows.text(row, 7)), rows.text(row, 8), rows.text(row, 9),
                           json_string(rows.text(row, 5)), rows.text(row, 4))
                    << '\n';
            } else {
                std::cout << fmt::format("{:<24}  {:<18}  {:<16}  {:<22}  {:<20}  {:>7}  {:>6}\n", rows.text(row, 0),
                                         rows.text(row, 1), rows.text(row, 2), rows.text(row, 3), or_dash(rows, row, 6),
                                         rows.text(row, 8), rows.text(row, 9));
            }
        }
        if (!json && rows.rows() == 0) {
            std::cerr << "conveyor schedules list: no schedules (a conveyor-scheduler with CONVEYOR_SCHEDULES "
                         "registers them when it leads)\n";
        }
        co_return kOk;
    });
}

}  // namespace conveyor::cli
