#include <fmt/format.h>

#include <boost/json/object.hpp>

#include "api.hpp"
#include "api_json.hpp"
#include "conveyor/core/flow_config.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;

asio::awaitable<HttpResponse> EnqueueApi::show_flow(const HttpRequest& /*request*/, const Caller& /*caller*/) {
    const auto applied = co_await flow::newest(pool_);
    auto held = co_await flow::held_back(pool_);
    boost::json::object shown;
    if (applied) {
        const auto config = flow::parse(applied->source, fmt::format("version {}", applied->version));
        shown = flow::to_json(*applied, config);
    } else {
        shown = {{"version", 0}, {"limits", flow::to_json(flow::FlowConfig{})}};
    }
    shown["held_back"] = std::move(held);
    auto response = json_response(200, shown);
    co_return response;
}

}  // namespace conveyor::scheduler
