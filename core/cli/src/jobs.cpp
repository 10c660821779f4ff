#include <fmt/format.h>

#include <boost/json/serialize.hpp>
#include <iostream>

#include "commands.hpp"
#include "conveyor/cli/cli.hpp"
#include "conveyor/core/job_history.hpp"

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

}  // namespace

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
        if (json) {
            std::cout << boost::json::serialize(job_history::to_json(*job)) << '\n';
        } else {
            print_job(*job);
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
                auto value = job_history::to_json(job);
                value.as_object().erase("attempts");
                std::cout << boost::json::serialize(value) << '\n';
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
