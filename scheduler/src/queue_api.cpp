#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>

#include "api.hpp"
#include "api_json.hpp"
#include "conveyor/admin/job_control.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;

asio::awaitable<std::optional<std::string>> EnqueueApi::add_depths(boost::json::object& queue,
                                                                   const std::string& family) {
    if (!monitor_.connected()) {
        co_return fmt::format("the broker is not connected: {}", monitor_.last_error());
    }
    boost::json::object bands;
    std::uint64_t messages = 0;
    for (const auto band : topology::kBands) {
        const auto name = topology::queue_name(family, band);
        auto counting = monitor_.async_queue_counts(name, asio::as_tuple(asio::use_awaitable));
        auto [error, counts] = co_await std::move(counting);
        if (error) {
            co_return fmt::format("{}: {}", name, error.message());
        }
        messages += counts.messages;
        bands[topology::band_name(band)] = {{"messages", counts.messages}, {"consumers", counts.consumers}};
    }
    const auto dead_letter_queue = topology::dead_letter_queue_name(family);
    auto counting = monitor_.async_queue_counts(dead_letter_queue, asio::as_tuple(asio::use_awaitable));
    auto [error, counts] = co_await std::move(counting);
    if (error) {
        co_return fmt::format("{}: {}", dead_letter_queue, error.message());
    }
    queue["messages"] = messages;
    queue["consumers"] = bands["normal"].as_object()["consumers"];
    queue["bands"] = std::move(bands);
    queue["dead_letter_queue_messages"] = counts.messages;
    co_return std::nullopt;
}

asio::awaitable<HttpResponse> EnqueueApi::list_queues(const HttpRequest& /*request*/, const Caller& /*caller*/) {
    const auto states = co_await job_control::pauses(pool_);
    boost::json::array queues;
    std::optional<std::string> broker_error;
    for (const auto& family : topology::default_families()) {
        boost::json::object queue{{"family", family}, {"queue", topology::queue_name(family)}};
        for (auto& [name, value] : job_control::to_json(job_control::family_pause(states, family))) {
            queue[name] = std::move(value);
        }
        if (!broker_error) {
            broker_error = co_await add_depths(queue, family);
        }
        queues.emplace_back(std::move(queue));
    }
    boost::json::object listed{{"queues", std::move(queues)}};
    if (broker_error) {
        listed["broker_error"] = *broker_error;  // the pauses are on record; only the depths are missing
    }
    auto response = json_response(200, listed);
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::pause_queue(bool paused, const HttpRequest& request, const Caller& caller) {
    const auto family = request.param("family").value_or("");
    const auto job_type = request.query_param("type").value_or("");
    std::optional<std::string> refused;
    try {
        job_control::check_pause_target(family, job_type);
    } catch (const std::invalid_argument& e) {
        refused = e.what();
    }
    if (refused) {
        auto response = error_response(400, *refused);
        co_return response;
    }
    const auto change = co_await job_control::set_paused(pool_, family, job_type, paused, caller.source());
    // Sent even when nothing changed: a worker that missed the first broadcast hears it now.
    const job_control::Command command = change.state;
    const auto error = co_await job_control::broadcast(publisher_, command);
    if (error) {
        spdlog::warn("api: {} {}: the broadcast failed ({}); workers read the record within 2 s",
                     paused ? "pause" : "resume", family, error.message());
    }
    if (change.changed) {
        spdlog::info("api: {} {}{} by {}", paused ? "paused" : "resumed", family,
                     job_type.empty() ? std::string() : fmt::format(" (type {})", job_type), caller.name);
    }
    auto body = job_control::to_json(change.state);
    body["changed"] = change.changed;
    auto response = json_response(200, body);
    co_return response;
}

}  // namespace conveyor::scheduler
