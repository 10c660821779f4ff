#include <fmt/format.h>

#include <algorithm>
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/parse.hpp>
#include <optional>

#include "api.hpp"
#include "api_json.hpp"
#include "conveyor/admin/job_history.hpp"
#include "conveyor/admin/workers.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;

namespace {

// The overview's window: what the console's charts show.
constexpr int kOverviewMinutes = 60;

boost::json::object fleet_json(const std::vector<workers::Worker>& listed) {
    std::int64_t running = 0;
    std::int64_t gone = 0;
    std::int64_t in_flight = 0;
    std::int64_t concurrency = 0;
    std::optional<std::int64_t> needed;
    boost::json::array open_breakers;
    for (const auto& worker : listed) {
        if (worker.state == "running") {
            ++running;
            in_flight += worker.load.in_flight;
            concurrency += worker.identity.concurrency;
            // Each worker estimates for the queues it consumes; the busiest estimate is what the fleet needs.
            if (worker.load.workers_needed) {
                needed = std::max(needed.value_or(0), *worker.load.workers_needed);
            }
            for (const auto& [circuit, state] : worker.load.circuit_breakers) {
                if (state != "closed") {
                    open_breakers.push_back({{"circuit", circuit}, {"state", state}, {"worker", worker.identity.name}});
                }
            }
        } else if (worker.state == "gone") {
            ++gone;
        }
    }
    return {{"running", running},
            {"gone", gone},
            {"in_flight", in_flight},
            {"concurrency", concurrency},
            {"needed", needed ? boost::json::value(*needed) : boost::json::value(nullptr)},
            {"open_circuit_breakers", std::move(open_breakers)}};
}

}  // namespace

asio::awaitable<HttpResponse> EnqueueApi::list_workers(const HttpRequest& /*request*/, const Caller& /*caller*/) {
    const auto listed = co_await workers::list(reads_);
    auto response = json_response(200, workers::to_json(listed));
    co_return response;
}

asio::awaitable<boost::json::value> EnqueueApi::prometheus_alerts() {
    if (prometheus_ == nullptr) {
        co_return nullptr;
    }
    const http::Request request{
        .method = "GET", .path = "/api/v1/alerts", .headers = {}, .body = {}, .content_type = ""};
    std::string failure;
    http::Response answer;
    try {
        answer = co_await prometheus_->send(request);  // named: no temporaries inside co_await for g++ 12
    } catch (const http::TransportError& e) {
        failure = e.what();
    }
    boost::system::error_code error;
    const auto body = boost::json::parse(answer.body, error);
    if (failure.empty() && (answer.status != 200 || error || !body.is_object())) {
        failure = fmt::format("Prometheus answered {}", answer.status);
    }
    if (!failure.empty()) {
        co_return boost::json::object{{"error", failure}};
    }
    boost::json::array alerts;
    const auto* listed = body.as_object().if_contains("data");
    const auto* found = listed != nullptr && listed->is_object() ? listed->as_object().if_contains("alerts") : nullptr;
    for (const auto& alert : found != nullptr && found->is_array() ? found->as_array() : boost::json::array{}) {
        if (!alert.is_object()) {
            continue;
        }
        // A field of the alert ("state") or of one of its groups ("labels", "alertname"); null if missing.
        const auto field = [&alert](std::string_view group, std::string_view name = {}) -> boost::json::value {
            const auto* value = alert.as_object().if_contains(group);
            if (value != nullptr && !name.empty()) {
                value = value->is_object() ? value->as_object().if_contains(name) : nullptr;
            }
            return value != nullptr ? *value : boost::json::value(nullptr);
        };
        alerts.push_back({{"name", field("labels", "alertname")},
                          {"severity", field("labels", "severity")},
                          {"summary", field("annotations", "summary")},
                          {"state", field("state")},
                          {"active_at", field("activeAt")}});
    }
    co_return boost::json::object{{"alerts", std::move(alerts)}};
}

asio::awaitable<HttpResponse> EnqueueApi::overview(const HttpRequest& /*request*/, const Caller& /*caller*/) {
    const auto activity = co_await job_history::activity(reads_, kOverviewMinutes);
    const auto listed = co_await workers::list(reads_);
    auto alerts = co_await prometheus_alerts();
    const auto counts = co_await reads_.query(
        "SELECT (SELECT count(*) FROM conveyor.dead_letters WHERE state = 'dead'), "
        "(SELECT count(*) FROM conveyor.scheduled_jobs WHERE state = 'pending')");
    boost::json::object shown{{"window_minutes", kOverviewMinutes}, {"queues", activity},
                              {"workers", fleet_json(listed)},      {"dead_letters", counts.integer(0, 0)},
                              {"scheduled", counts.integer(0, 1)},  {"prometheus", std::move(alerts)}};
    auto response = json_response(200, shown);
    co_return response;
}

}  // namespace conveyor::scheduler
