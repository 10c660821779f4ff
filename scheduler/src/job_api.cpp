#include <fmt/format.h>

#include "api.hpp"
#include "api_json.hpp"
#include "conveyor/core/job_history.hpp"

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

asio::awaitable<HttpResponse> EnqueueApi::show_job(const HttpRequest& request, const ApiToken& /*token*/) {
    const auto id = request.param("id").value_or("");
    const auto job = co_await job_history::find(pool_, id);
    if (!job) {
        auto response = error_response(404, fmt::format("no job {} in the history or among the scheduled jobs", id));
        co_return response;
    }
    auto response = json_response(200, job_history::to_json(*job));
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::list_jobs(const HttpRequest& request, const ApiToken& /*token*/) {
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
        page = co_await job_history::list(pool_, filter);
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

}  // namespace conveyor::scheduler
