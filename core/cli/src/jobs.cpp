#include <fmt/format.h>

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <iostream>

#include "commands.hpp"
#include "conveyor/admin/job_control.hpp"
#include "conveyor/admin/job_history.hpp"
#include "conveyor/cli/cli.hpp"
#include "conveyor/core/envelope.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::cli {
namespace asio = boost::asio;

namespace {

std::string or_dash(std::string_view text) {
    return text.empty() ? std::string("-") : std::string(text);
}

std::string progress_text(const job_history::Job& job) {
    if (!job.progress) {
        return "-";
    }
    auto text = fmt::format("{:.0f}%", *job.progress * 100);
    return job.progress_note.empty() ? text : fmt::format("{} {}", text, job.progress_note);
}

void print_job(const job_history::Job& job) {
    for (const auto& [label, value] : std::initializer_list<std::pair<std::string_view, std::string>>{
             {"id", job.id},
             {"type", job.type},
             {"queue", job.queue},
             {"state", job.state},
             {"correlation id", or_dash(job.correlation_id)},
             {"trace id", or_dash(job.trace_id)},
             {"enqueued at", or_dash(job.enqueued_at)},
             {"updated at", job.updated_at},
             {"progress", progress_text(job)}}) {
        std::cout << fmt::format("{:<15} {}\n", fmt::format("{}:", label), value);
    }
    std::cout << fmt::format("\n{:>7}  {:<13}  {:<20}  {:<24}  {:>10}  {}\n", "ATTEMPT", "STATE", "WORKER",
                             "STARTED (UTC)", "DURATION", "ERROR");
    for (const auto& attempt : job.attempts) {
        std::cout << fmt::format("{:>7}  {:<13}  {:<20}  {:<24}  {:>10}  {}\n", attempt.number, attempt.state,
                                 attempt.worker, attempt.started_at,
                                 attempt.duration_ms ? fmt::format("{} ms", *attempt.duration_ms) : std::string("-"),
                                 or_dash(attempt.error));
    }
}

/// What `conveyor jobs cancel` says of one job; false if it could not be cancelled.
bool report_cancel(const std::string& id, const job_control::CancelOutcome& outcome, bool json) {
    using Result = job_control::CancelOutcome::Result;
    if (json) {
        std::cout << boost::json::serialize(
                         boost::json::object{{"id", id},
                                             {"result", job_control::name(outcome.result)},
                                             {"state", outcome.state.empty() ? boost::json::value(nullptr)
                                                                             : boost::json::value(outcome.state)}})
                  << '\n';
    }
    if (outcome.result == Result::terminal) {
        std::cerr << fmt::format("conveyor jobs cancel: {} has already ended ({}); nothing to cancel\n", id,
                                 outcome.state);
        return false;
    }
    if (!json) {
        static constexpr std::string_view kMeaning[] = {
            "cancelled: it was scheduled and will not be published",
            "cancelling: the worker that runs or takes it stops it and records it as cancelled",
            "cancel pending: not on record yet; whichever worker takes it settles it as cancelled",
        };
        std::cout << fmt::format("{}  {}\n", id, kMeaning[static_cast<int>(outcome.result)]);
    }
    return true;
}

}  // namespace

int jobs_cancel(const CommonOptions& common, const std::string& pg_url, const std::vector<std::string>& ids,
                bool json) {
    for (const auto& id : ids) {
        if (id.empty() || id.size() > kMaxJobIdBytes) {
            std::cerr << fmt::format("conveyor jobs cancel: a job id is 1 to {} bytes, not {}\n", kMaxJobIdBytes,
                                     id.size());
            return kUsage;
        }
    }
    amqp::Topology control;
    control.exchanges.push_back({std::string(topology::kControlExchange), "fanout"});
    amqp::Connection connection(cli_connection_settings(common, "conveyor jobs cancel"), control);
    return with_connection(connection, "jobs cancel", [&](asio::io_context& io) -> asio::awaitable<int> {
        pg::Pool pool(io.get_executor(), cli_database_settings(pg_url, "jobs cancel"));
        int code = kOk;
        try {
            for (const auto& id : ids) {
                const auto outcome = co_await job_control::request_cancel(pool, id, operator_name());
                if (!report_cancel(id, outcome, json)) {
                    code = kFailed;
                    continue;
                }
                const job_control::Command command = job_control::Cancel{id};
                const auto error = co_await job_control::broadcast(connection, command);
                if (error) {
                    std::cerr << fmt::format(
                        "conveyor jobs cancel: {}: the broadcast failed ({}); workers read the tombstone within 2 s\n",
                        id, error.message());
                }
            }
        } catch (const pg::Error& e) {
            code = report_database_error("jobs cancel", pg_url, e);
        }
        co_return code;
    });
}

int jobs_show(const std::string& pg_url, const std::string& id, bool json) {
    return with_database(pg_url, "jobs show", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto job = co_await job_history::find(pool, id);
        if (!job) {
            std::cerr << fmt::format(
                "conveyor jobs show: no job {} in the history or among the scheduled jobs (a job appears once a "
                "worker takes it or once it is scheduled; history is kept for CONVEYOR_HISTORY_RETENTION)\n",
                id);
            co_return kFailed;
        }
        audit::Filter touched;
        touched.job_id = id;
        const auto entries = co_await audit::list(pool, touched);
        if (json) {
            auto shown = job_history::to_json(*job);
            shown.as_object()["audit"] = audit::to_json(entries, touched).as_object()["entries"];
            std::cout << boost::json::serialize(shown) << '\n';
            co_return kOk;
        }
        print_job(*job);
        if (!entries.empty()) {
            std::cout << "audit:\n";
        }
        for (const auto& entry : entries) {
            print_audit_entry(entry);
        }
        co_return kOk;
    });
}

int jobs_list(const JobsListOptions& options) {
    options.filter.validate();
    return with_database(options.pg_url, "jobs list", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto page = co_await job_history::list(pool, options.filter);
        if (!options.json) {
            std::cout << fmt::format("{:<36}  {:<22}  {:<13}  {:<24}  {}\n", "ID", "TYPE", "STATE", "UPDATED (UTC)",
                                     "PROGRESS");
        }
        for (const auto& job : page.jobs) {
            if (options.json) {
                std::cout << boost::json::serialize(job_history::summary_json(job)) << '\n';
            } else {
                std::cout << fmt::format("{:<36}  {:<22}  {:<13}  {:<24}  {}\n", job.id, job.type, job.state,
                                         job.updated_at, progress_text(job));
            }
        }
        if (!page.next.empty()) {
            std::cerr << fmt::format("conveyor jobs list: more jobs match; the next page: --after '{}'\n", page.next);
        }
        co_return kOk;
    });
}

}  // namespace conveyor::cli
