#include "flow_limits.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <stdexcept>

namespace conveyor::worker {
namespace asio = boost::asio;

std::shared_ptr<const flow::FlowConfig> FlowLimits::current() const {
    const std::lock_guard lock(mutex_);
    return current_;
}

asio::awaitable<void> FlowLimits::load() {
    std::int64_t after = 0;
    {
        const std::lock_guard lock(mutex_);
        after = version_;
    }
    const auto applied = co_await flow::newest(pool_, after);
    known_ = true;
    if (!applied) {
        co_return;
    }
    std::shared_ptr<const flow::FlowConfig> config;
    try {
        config = std::make_shared<flow::FlowConfig>(
            flow::parse(applied->source, fmt::format("flow version {}", applied->version)));
    } catch (const std::invalid_argument& e) {
        spdlog::error("cannot read the flow limits stored as version {}: {}; version {} stays in force",
                      applied->version, e.what(), after);
    }
    {
        const std::lock_guard lock(mutex_);
        version_ = applied->version;
        if (config) {
            current_ = config;
        }
    }
    if (config) {
        on_change_(applied->version);
    }
}

asio::awaitable<void> FlowLimits::follow() {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    std::string last_failure;
    while (true) {
        timer.expires_after(poll_interval_);
        co_await timer.async_wait(asio::use_awaitable);
        std::string failure;
        try {
            co_await load();
        } catch (const pg::Error& e) {
            failure = e.what();
        }
        if (!failure.empty() && failure != last_failure) {
            spdlog::warn("cannot read the flow limits ({}); the ones in force stay", failure);
        }
        last_failure = failure;
    }
}

}  // namespace conveyor::worker
