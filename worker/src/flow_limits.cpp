#include "flow_limits.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/serialize.hpp>
#include <stdexcept>

#include "conveyor/core/header_json.hpp"
#include "conveyor/core/utf8.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;

std::string limit_key(const Envelope& envelope, const std::string& pointer) {
    constexpr std::size_t kMaxKeyBytes = 255;
    std::string key;
    const auto value = envelope.payload.at_pointer(pointer);
    if (value.error() == simdjson::SUCCESS) {
        std::string_view text;
        key = value.get(text) == simdjson::SUCCESS ? std::string(text) : simdjson::minify(value.value_unsafe());
    }
    if (key.size() > kMaxKeyBytes) {
        key.resize(kMaxKeyBytes);
    }
    return utf8::postgres_text(key);
}

std::string pg_interval(std::chrono::milliseconds duration) {
    return fmt::format("{} milliseconds", duration.count());
}

LineEntry line_entry(const amqp::Delivery& delivery) {
    return LineEntry{delivery.message.properties.message_id,
                     boost::json::serialize(amqp::properties_to_json(delivery.message.properties)),
                     pg::bytea_literal(delivery.message.body)};
}

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
