#pragma once

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "conveyor/core/async_condition.hpp"

namespace conveyor {

/// Calls that many coroutines make at once, run together by one coroutine (serve()): a request waits while the
/// batch before it runs, then goes with every request that arrived meanwhile (at most `max_batch`). One round trip
/// and one commit then serve a whole batch, and the batches grow with the load, without a timer. Thread-safe.
template <typename Request, typename Reply>
class BatchedCalls {
  public:
    /// Runs a batch: one reply per request, in order. What it throws, every caller of the batch gets.
    using Run = std::function<boost::asio::awaitable<std::vector<Reply>>(std::vector<Request>&)>;

    explicit BatchedCalls(std::size_t max_batch) : max_batch_(max_batch) {}

    /// The request's reply once its batch ran; rethrows the batch's failure. operation_aborted once serve() ends.
    boost::asio::awaitable<Reply> call(Request request) {
        auto reply = std::make_shared<Channel>(co_await boost::asio::this_coro::executor, 1);
        {
            const std::lock_guard lock(mutex_);
            if (closed_) {
                throw boost::system::system_error(boost::asio::error::operation_aborted);
            }
            pending_.push_back({std::move(request), reply});
        }
        arrived_.notify_all();
        auto [error, outcome] = co_await reply->async_receive(boost::asio::as_tuple(boost::asio::use_awaitable));
        if (error) {
            throw boost::system::system_error(error);
        }
        if (outcome.failure) {
            std::rethrow_exception(outcome.failure);
        }
        co_return std::move(outcome.reply);
    }

    /// Runs the batches until cancelled; then every call waiting, and every later one, ends with operation_aborted.
    boost::asio::awaitable<void> serve(Run run) {
        try {
            while (true) {
                auto has_pending = [this] {
                    const std::lock_guard lock(mutex_);
                    return !pending_.empty();
                };
                co_await arrived_.wait(has_pending);
                auto batch = take_batch();
                co_await run_batch(run, batch);
            }
        } catch (...) {
            close();
            throw;
        }
    }

  private:
    struct Outcome {
        std::exception_ptr failure;
        Reply reply{};
    };
    using Channel = boost::asio::experimental::concurrent_channel<void(boost::system::error_code, Outcome)>;
    struct Pending {
        Request request;
        std::shared_ptr<Channel> reply;
    };

    std::vector<Pending> take_batch() {
        const std::lock_guard lock(mutex_);
        std::vector<Pending> batch;
        const auto taken = std::min(pending_.size(), max_batch_);
        batch.assign(std::make_move_iterator(pending_.begin()),
                     std::make_move_iterator(pending_.begin() + static_cast<std::ptrdiff_t>(taken)));
        pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(taken));
        return batch;
    }

    boost::asio::awaitable<void> run_batch(const Run& run, std::vector<Pending>& batch) {
        std::vector<Request> requests;
        requests.reserve(batch.size());
        for (auto& pending : batch) {
            requests.push_back(std::move(pending.request));
        }
        std::exception_ptr failure;
        std::vector<Reply> replies;
        try {
            replies = co_await run(requests);
        } catch (const boost::system::system_error& e) {
            if (e.code() == boost::asio::error::operation_aborted) {
                for (auto& pending : batch) {
                    pending.reply->try_send(boost::asio::error::operation_aborted, Outcome{});
                }
                throw;  // serve() is cancelled
            }
            failure = std::current_exception();
        } catch (...) {
            failure = std::current_exception();
        }
        for (std::size_t i = 0; i < batch.size(); ++i) {
            Outcome outcome{failure};
            if (!failure && i < replies.size()) {
                outcome.reply = std::move(replies[i]);
            }
            batch[i].reply->try_send(boost::system::error_code{}, std::move(outcome));
        }
    }

    void close() {
        std::vector<Pending> left;
        {
            const std::lock_guard lock(mutex_);
            closed_ = true;
            left.swap(pending_);
        }
        for (auto& pending : left) {
            pending.reply->try_send(boost::asio::error::operation_aborted, Outcome{});
        }
    }

    std::size_t max_batch_;
    std::mutex mutex_;
    std::vector<Pending> pending_;
    bool closed_ = false;
    AsyncCondition arrived_;
};

}  // namespace conveyor
