#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "conveyor/core/amqp.hpp"

namespace conveyor::amqp {
namespace asio = boost::asio;

namespace {

asio::awaitable<std::vector<boost::system::error_code>> publish_group(
    Connection& connection, std::vector<Message> messages, std::optional<std::chrono::milliseconds> timeout) {
    using Publish = decltype(connection.async_publish(Message{}, timeout, asio::deferred));
    std::vector<Publish> publishes;
    publishes.reserve(messages.size());
    for (auto& message : messages) {
        publishes.push_back(connection.async_publish(std::move(message), timeout, asio::deferred));
    }
    auto group = asio::experimental::make_parallel_group(std::move(publishes));
    auto [order, errors] = co_await group.async_wait(asio::experimental::wait_for_all(), asio::use_awaitable);
    co_return std::move(errors);
}

}  // namespace

asio::awaitable<std::vector<boost::system::error_code>> publish_all(Connection& connection,
                                                                    std::vector<Message> messages,
                                                                    std::optional<std::chrono::milliseconds> timeout) {
    if (messages.empty()) {
        std::vector<boost::system::error_code> none;  // a ranged group of nothing would never complete
        co_return none;
    }
    // Asio 1.24's ranged parallel group reads its range (which lives in the awaiting frame) after it has launched
    // the last operation. Were the confirms to come first, on another thread, the frame would resume and free the
    // range under that read (ASan saw it in the relay). On a strand of its own the group's completion is queued
    // until the launch has returned.
    auto strand = asio::make_strand(co_await asio::this_coro::executor);
    co_return co_await asio::co_spawn(strand, publish_group(connection, std::move(messages), timeout),
                                      asio::use_awaitable);
}

asio::awaitable<void> stop_connection(Connection& connection) {
    connection.stop();
    co_return;
}

}  // namespace conveyor::amqp
