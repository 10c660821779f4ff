#include "heartbeat.hpp"

#include <spdlog/spdlog.h>

#include "conveyor/core/task_group.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

asio::awaitable<void> Heartbeat::run(const DatabaseHealth& database) {
    while (true) {
        if (database.ok()) {
            try {
                co_await beat_once();
            } catch (const pg::Error& e) {
                spdlog::debug("heartbeat skipped: {}", e.what());
            }
        }
        const bool waited = co_await wait_until(Clock::now() + identity_.heartbeat_interval);
        if (!waited) {
            co_return;
        }
    }
}

asio::awaitable<void> Heartbeat::beat_once() {
    if (instance_id_.empty()) {
        instance_id_ = co_await workers::register_instance(pool_, identity_);
        spdlog::info("worker {} on record as instance {} (heartbeat every {} ms)", identity_.name, instance_id_,
                     identity_.heartbeat_interval.count());
    }
    const auto load = load_();
    co_await workers::beat(pool_, instance_id_, load);
}

asio::awaitable<void> Heartbeat::stop() {
    if (instance_id_.empty()) {
        co_return;
    }
    std::string failure;
    try {
        const auto load = load_();
        co_await workers::stop(pool_, instance_id_, load);
    } catch (const pg::Error& e) {
        failure = e.what();
    }
    if (!failure.empty()) {
        spdlog::warn("could not mark instance {} stopped ({}); it shows as gone after {} heartbeats", instance_id_,
                     failure, workers::kMissedHeartbeats);
    }
}

}  // namespace conveyor::worker
