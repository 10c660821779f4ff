#include <fmt/format.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <iostream>

#include "commands.hpp"
#include "conveyor/admin/job_control.hpp"
#include "conveyor/cli/cli.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::cli {
namespace asio = boost::asio;

namespace {

/// The pauses on record; nothing if the database cannot be read: the broker's counts are still worth printing.
asio::awaitable<std::optional<std::vector<job_control::PauseState>>> read_pauses(asio::io_context& io,
                                                                                 const std::string& pg_url) {
    pg::Pool pool(io.get_executor(), cli_database_settings(pg_url, "queues"));
    std::string failure;
    std::vector<job_control::PauseState> states;
    try {
        states = co_await job_control::pauses(pool);
    } catch (const pg::Error& e) {
        failure = e.what();
    }
    if (!failure.empty()) {
        std::cerr << fmt::format("conveyor queues: cannot read the pauses from PostgreSQL ({}); PAUSED shows ?\n",
                                 failure);
        co_return std::nullopt;
    }
    co_return states;
}

/// The PAUSED column of a job queue: "yes (since … by …)", the paused types, "no", or "?" without the database.
std::string paused_text(const std::optional<job_control::FamilyPause>& pause) {
    if (!pause) {
        return "?";
    }
    if (pause->whole) {
        return fmt::format("yes (since {} by {})", pause->whole->changed_at, pause->whole->changed_by);
    }
    return pause->types.empty() ? std::string("no") : fmt::format("types: {}", fmt::join(pause->types, ", "));
}

boost::json::object queue_json(const std::string& queue, const std::string& family, const amqp::QueueCounts& counts,
                               const std::optional<job_control::FamilyPause>& pause, bool job_queue) {
    boost::json::object line{
        {"queue", queue}, {"family", family}, {"ready", counts.messages}, {"consumers", counts.consumers}};
    if (!job_queue) {
        return line;
    }
    line["priority"] = topology::band_name(topology::band_of_queue(queue));
    if (!pause) {
        line["paused"] = nullptr;
        return line;
    }
    for (auto& [name, value] : job_control::to_json(*pause)) {
        line[name] = std::move(value);
    }
    return line;
}

void print_pause_change(const job_control::PauseChange& change, bool json) {
    const auto& state = change.state;
    if (json) {
        auto line = job_control::to_json(state);
        line["changed"] = change.changed;
        std::cout << boost::json::serialize(line) << '\n';
        return;
    }
    const auto queue = topology::queue_name(state.family);
    const auto target = state.job_type.empty() ? fmt::format("{} (every job type)", queue)
                                               : fmt::format("{} in {}", state.job_type, queue);
    if (!change.changed) {
        std::cout << fmt::format("{} was already {} (since {} by {})\n", target, state.paused ? "paused" : "running",
                                 state.changed_at, state.changed_by);
    } else if (state.paused) {
        std::cout << fmt::format(
            "paused {}: workers start none of its jobs from now on (within a second); running ones finish\n", target);
    } else {
        std::cout << fmt::format("resumed {}: workers take its jobs again\n", target);
    }
}

}  // namespace

int show_queues(const CommonOptions& common, const QueuesOptions& options) {
    const auto families = topology::parse_families(options.families);
    amqp::Connection connection(cli_connection_settings(common, "conveyor queues"), {});
    return with_connection(connection, "queues", [&](asio::io_context& io) -> asio::awaitable<int> {
        const auto pauses = co_await read_pauses(io, options.pg_url);
        int exit_code = kOk;
        if (!options.json) {
            std::cout << fmt::format("{:<28} {:>10} {:>10}  {}\n", "QUEUE", "READY", "CONSUMERS", "PAUSED");
        }
        for (const auto& family : families) {
            const auto pause = pauses ? std::optional(job_control::family_pause(*pauses, family)) : std::nullopt;
            // The priority bands, then the dead letters.
            const std::array<std::string, 4> queues{
                topology::queue_name(family, topology::Band::high), topology::queue_name(family),
                topology::queue_name(family, topology::Band::low), topology::dead_letter_queue_name(family)};
            for (const auto& queue : queues) {
                auto [error, counts] =
                    co_await connection.async_queue_counts(queue, asio::as_tuple(asio::use_awaitable));
                if (error == amqp::Errc::not_found) {
                    std::cerr << fmt::format("conveyor queues: {} does not exist (run conveyor topology declare)\n",
                                             queue);
                    exit_code = kFailed;
                    continue;
                }
                if (error) {
                    std::cerr << fmt::format("conveyor queues: {}: {}\n", queue, error.message());
                    co_return kUnavailable;
                }
                const bool job_queue = queue != queues.back();
                if (options.json) {
                    std::cout << boost::json::serialize(queue_json(queue, family, counts, pause, job_queue)) << '\n';
                } else {
                    std::cout << fmt::format("{:<28} {:>10} {:>10}  {}\n", queue, counts.messages, counts.consumers,
                                             job_queue ? paused_text(pause) : "-");
                }
            }
        }
        co_return exit_code;
    });
}

int set_queue_paused(const CommonOptions& common, const PauseOptions& options, bool paused) {
    const std::string_view verb = paused ? "pause" : "resume";
    job_control::check_pause_target(options.family, options.job_type);
    amqp::Topology control;
    control.exchanges.push_back({std::string(topology::kControlExchange), "fanout"});
    amqp::Connection connection(cli_connection_settings(common, fmt::format("conveyor queues {}", verb)), control);
    return with_connection(
        connection, fmt::format("queues {}", verb), [&](asio::io_context& io) -> asio::awaitable<int> {
            pg::Pool pool(io.get_executor(), cli_database_settings(options.pg_url, fmt::format("queues {}", verb)));
            job_control::PauseChange change;
            try {
                change =
                    co_await job_control::set_paused(pool, options.family, options.job_type, paused, operator_name());
            } catch (const pg::Error& e) {
                co_return report_database_error(fmt::format("queues {}", verb), options.pg_url, e);
            }
            // Sent even when nothing changed: a worker that missed the first broadcast hears it now.
            const job_control::Command command = change.state;
            const auto error = co_await job_control::broadcast(connection, command);
            if (error) {
                std::cerr << fmt::format(
                    "conveyor queues {}: the broadcast failed ({}); workers read the record within 2 s\n", verb,
                    error.message());
            }
            print_pause_change(change, options.json);
            co_return kOk;
        });
}

}  // namespace conveyor::cli
