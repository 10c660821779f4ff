#include "archiver.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "conveyor/admin/dead_letters.hpp"
#include "conveyor/core/task_group.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;

namespace {

constexpr auto kRetryBackoff = std::chrono::seconds(1);

}  // namespace

asio::awaitable<void> DeadLetterArchiver::run() {
    while (true) {
        auto [error, batch] = co_await deliveries_.async_receive(asio::as_tuple(asio::use_awaitable));
        if (error) {
            co_return;  // cancelled: the scheduler stops
        }
        co_await store(batch);
    }
}

asio::awaitable<void> DeadLetterArchiver::store(const amqp::DeliveryBatch& batch) {
    asio::steady_timer backoff(co_await asio::this_coro::executor);
    std::string failure;
    while (true) {
        std::string attempt_failure;
        try {
            co_await dead_letters::archive(pool_, batch);
            break;
        } catch (const std::exception& e) {
            attempt_failure = e.what();
        }
        const auto state = co_await asio::this_coro::cancellation_state;
        if (cancelled(state)) {
            co_return;  // the unacknowledged deliveries go back to their queue when the connection closes
        }
        if (failure.empty()) {
            spdlog::error(
                "dead-letter archiver: cannot store {} dead letters (first: job {}): {}; retrying every second, they "
                "stay in their queue meanwhile",
                batch.size(), batch.front().message.properties.message_id, attempt_failure);
        }
        failure = std::move(attempt_failure);
        backoff.expires_after(kRetryBackoff);
        co_await backoff.async_wait(asio::use_awaitable);
    }
    for (const auto& delivery : batch) {
        consumer_.ack(delivery);
        spdlog::debug("dead-letter archiver: stored job {} (correlation {}) from {}",
                      delivery.message.properties.message_id, delivery.message.properties.correlation_id,
                      delivery.queue);
    }
    spdlog::info("dead-letter archiver: stored {} dead letters", batch.size());
}

}  // namespace conveyor::scheduler
