#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "api.hpp"
#include "api_json.hpp"
#include "conveyor/admin/audit.hpp"
#include "conveyor/admin/job_control.hpp"
#include "conveyor/admin/job_history.hpp"
#include "conveyor/core/envelope.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;

namespace {

/// The filter from GET /v1/jobs's query parameters: the names `conveyor jobs list` takes as flags.
job_history::Filter jobs_filter(const HttpRequest& request) {
    job_history::Filter filter;
    for (auto [name, field] :
         {std::pair{"type", &job_history::Filter::type}, std::pair{"state", &job_history::Filter::state},
          std::pair{"queue", &job_history::Filter::queue},
          std::pair{"correlation_id", &job_history::Filter::correlation_id}}) {
        auto value = request.query_param(name);
        if (value && value->empty()) {
            throw std::invalid_argument(fmt::format("{} must not be empty", name));
        }
        filter.*field = std::move(value);
    }
    if (auto since = request.query_param("since")) {
        filter.since = std::move(*since);
    }
    if (auto after = request.query_param("after")) {
        filter.after = std::move(*after);
    }
    if (const auto limit = request.query_param("limit")) {
        const auto parsed = parse_integer(*limit);
        if (!parsed) {
            throw std::invalid_argument(fmt::format("limit: '{}' is not a number", *limit));
        }
        filter.limit = *parsed;
    }
    filter.validate();
    return filter;
}

}  // namespace

asio::awaitable<HttpResponse> EnqueueApi::show_job(const HttpRequest& request, const Caller& /*caller*/) {
    const auto id = request.param("id").value_or("");
    const auto job = co_await job_history::find(reads_, id);
    if (!job) {
        auto response = error_response(404, fmt::format("no job {} in the history or among the scheduled jobs", id));
        co_return response;
    }
    audit::Filter touched;
    touched.job_id = id;
    const auto entries = co_await audit::list(reads_, touched);
    auto shown = job_history::to_json(*job);
    shown.as_object()["audit"] = audit::to_json(entries, touched).as_object()["entries"];
    auto response = json_response(200, shown);
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::list_jobs(const HttpRequest& request, const Caller& /*caller*/) {
    job_history::Filter filter;
    try {
        filter = jobs_filter(request);
    } catch (const std::invalid_argument& e) {
        auto response = error_response(400, e.what());
        co_return response;
    }
    std::optional<std::string> refused;
    job_history::Page page;
    try {
        page = co_await job_history::list(reads_, filter);
    } catch (const pg::Error& e) {
        // Class 22: a since PostgreSQL cannot read as a time or an interval.
        if (!e.sqlstate().starts_with("22")) {
            throw;
        }
        refused = fmt::format("since: {}", e.message());
    }
    if (refused) {
        auto response = error_response(400, *refused);
        co_return response;
    }
    auto response = json_response(200, job_history::to_json(page));
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::cancel_job(const HttpRequest& request, const Caller& caller) {
    const auto id = request.param("id").value_or("");
    if (id.empty() || id.size() > kMaxJobIdBytes) {
        auto response = error_response(400, fmt::format("a job id is 1 to {} bytes", kMaxJobIdBytes));
        co_return response;
    }
    const auto outcome = co_await job_control::request_cancel(pool_, id, caller.source());
    using Result = job_control::CancelOutcome::Result;
    if (outcome.result == Result::terminal) {
        auto response = json_response(
            409, boost::json::object{{"error", fmt::format("job {} has already ended ({})", id, outcome.state)},
                                     {"state", outcome.state}});
        co_return response;
    }
    // The tombstone is stored: a worker that missed the broadcast reads it within seconds.
    const job_control::Command command = job_control::Cancel{std::string(id)};
    const auto error = co_await job_control::broadcast(publisher_, command);
    if (error) {
        spdlog::warn("api: cancel {}: the broadcast failed ({}); workers read the tombstone", id, error.message());
    }
    auto response = json_response(outcome.result == Result::cancelled ? 200 : 202,
                                  boost::json::object{{"id", id}, {"state", job_control::name(outcome.result)}});
    co_return response;
}

}  // namespace conveyor::scheduler
