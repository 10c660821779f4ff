#include "conveyor/core/task_group.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/multiple_exceptions.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "conveyor/core/logging.hpp"

namespace conveyor {
namespace asio = boost::asio;

namespace {

bool ended_by_cancellation(const std::exception_ptr& error) {
    if (!error) {
        return false;
    }
    try {
        std::rethrow_exception(error);
    } catch (const boost::system::system_error& e) {
        return e.code() == asio::error::operation_aborted;
    } catch (const asio::multiple_exceptions& e) {
        // Awaitable operators' `||` when both sides failed: the exception of the side that ended first.
        return ended_by_cancellation(e.first_exception());
    } catch (...) {
        return false;
    }
}

asio::awaitable<std::vector<std::exception_ptr>> run_group(std::vector<asio::awaitable<void>> loops) {
    const auto executor = co_await asio::this_coro::executor;
    using Spawned = decltype(asio::co_spawn(executor, std::declval<asio::awaitable<void>>(), asio::deferred));
    std::vector<Spawned> spawned;
    spawned.reserve(loops.size());
    for (auto& loop : loops) {
        spawned.push_back(asio::co_spawn(executor, std::move(loop), asio::deferred));
    }
    auto group = asio::experimental::make_parallel_group(std::move(spawned));
    auto [order, errors] = co_await group.async_wait(asio::experimental::wait_for_one_error(), asio::use_awaitable);
    co_return std::move(errors);
}

}  // namespace

asio::awaitable<void> run_side_by_side(std::vector<asio::awaitable<void>> loops) {
    // On a strand of its own, as amqp::publish_all's group: Asio 1.24's ranged group reads its range after the
    // last launch, which must not race the group's completion.
    auto strand = asio::make_strand(co_await asio::this_coro::executor);
    const auto errors = co_await asio::co_spawn(strand, run_group(std::move(loops)), asio::use_awaitable);
    std::exception_ptr cancellation;
    for (const auto& error : errors) {
        if (error && !ended_by_cancellation(error)) {
            std::rethrow_exception(error);
        }
        cancellation = cancellation ? cancellation : error;
    }
    if (cancellation) {
        std::rethrow_exception(cancellation);
    }
}

TaskGroup::TaskGroup(const asio::any_io_executor& executor)
    : executor_(executor), join_strand_(asio::make_strand(executor)) {}

void TaskGroup::start(std::string name, Task& task, asio::awaitable<void> coroutine) {
    ++running_;
    asio::co_spawn(task.strand(), std::move(coroutine),
                   asio::bind_cancellation_slot(task.signal().slot(), [this, failed = log_failure(std::move(name))](
                                                                          const std::exception_ptr& error) {
                       if (!ended_by_cancellation(error)) {
                           failed(error);
                       }
                       if (--running_ == 0) {
                           asio::post(join_strand_, [this] {
                               if (join_timer_ != nullptr) {
                                   join_timer_->cancel();
                               }
                           });
                       }
                   }));
}

void TaskGroup::cancel(asio::cancellation_type type) {
    for (auto& task : tasks_) {
        asio::post(task.strand(), [&task, type] { task.signal().emit(type); });
    }
}

asio::awaitable<bool> TaskGroup::join(std::chrono::steady_clock::time_point deadline) {
    // On the join strand, where the last task's wake-up lands: it cannot come between the count's check and the
    // wait.
    auto waited = asio::co_spawn(join_strand_, wait_for_all(deadline), asio::use_awaitable);
    co_return co_await std::move(waited);
}

asio::awaitable<bool> TaskGroup::wait_for_all(std::chrono::steady_clock::time_point deadline) {
    asio::steady_timer timer(co_await asio::this_coro::executor, deadline);
    join_timer_ = &timer;
    while (running_ > 0 && std::chrono::steady_clock::now() < deadline) {
        // Cancelled by the last task to end, or expired: the count is the truth either way.
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    join_timer_ = nullptr;
    co_return running_ == 0;
}

asio::awaitable<bool> wait_until(std::chrono::steady_clock::time_point at) {
    // Checked first: a cancellation that came while the coroutine was not waiting is only on record here.
    const auto state = co_await asio::this_coro::cancellation_state;
    if (cancelled(state)) {
        co_return false;
    }
    asio::steady_timer timer(co_await asio::this_coro::executor, at);
    auto [error] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    co_return !error;
}

}  // namespace conveyor
