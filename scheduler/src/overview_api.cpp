#include <boost/json/object.hpp>

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
    for (const auto& worker : listed) {
        if (worker.state == "running") {
            ++running;
            in_flight += worker.load.in_flight;
            concurrency += worker.identity.concurrency;
        } else if (worker.state == "gone") {
            ++gone;
        }
    }
    return {{"running", running}, {"gone", gone}, {"in_flight", in_flight}, {"concurrency", concurrency}};
}

}  // namespace

asio::awaitable<HttpResponse> EnqueueApi::list_workers(const HttpRequest& /*request*/, const Caller& /*caller*/) {
    const auto listed = co_await workers::list(pool_);
    auto response = json_response(200, workers::to_json(listed));
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::overview(const HttpRequest& /*request*/, const Caller& /*caller*/) {
    const auto activity = co_await job_history::activity(pool_, kOverviewMinutes);
    const auto listed = co_await workers::list(pool_);
    const auto counts = co_await pool_.query(
        "SELECT (SELECT count(*) FROM conveyor.dead_letters WHERE state = 'dead'), "
        "(SELECT count(*) FROM conveyor.scheduled_jobs WHERE state = 'pending')");
    boost::json::object shown{{"window_minutes", kOverviewMinutes},
                              {"queues", activity},
                              {"workers", fleet_json(listed)},
                              {"dead_letters", counts.integer(0, 0)},
                              {"scheduled", counts.integer(0, 1)}};
    auto response = json_response(200, shown);
    co_return response;
}

}  // namespace conveyor::scheduler
