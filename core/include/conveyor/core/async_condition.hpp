#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <concepts>
#include <list>
#include <memory>
#include <mutex>

namespace conveyor {

/// A condition that coroutines wait for while other threads change the state it reads: wait(ready) returns once
/// `ready()` holds, checked again each time notify_all() is called. Waiters are woken by message, never by polling,
/// and a notify_all() that finds nobody waiting costs one atomic load, so it may sit on a hot path.
///
/// The state `ready` reads must be sequentially consistent atomics (or guarded by a lock) that the notifier changes
/// before it calls notify_all(): a waiter registers before it looks, the notifier looks for waiters after it
/// changes, so one of them sees the other. The waiting coroutine's cancellation slot ends the wait: it throws
/// operation_aborted, as any Asio wait does.
class AsyncCondition {
  public:
    AsyncCondition() = default;
    AsyncCondition(const AsyncCondition&) = delete;
    AsyncCondition& operator=(const AsyncCondition&) = delete;
    /// No coroutine may still be waiting.
    ~AsyncCondition() = default;

    template <std::predicate Ready>
    boost::asio::awaitable<void> wait(Ready ready) {
        if (ready()) {
            co_return;
        }
        Waiter waiter(*this, co_await boost::asio::this_coro::executor);
        while (!ready()) {
            co_await waiter.wake_up();
        }
    }

    /// Wakes every waiter to look again. Only a failure to allocate could make it throw.
    void notify_all() noexcept;

  private:
    using Channel = boost::asio::experimental::concurrent_channel<void(boost::system::error_code)>;

    /// One waiting coroutine: its wake-up channel (one slot: wake-ups while it looks are not lost, and merge) is
    /// on the list from before its first look until it stops waiting.
    class Waiter {
      public:
        Waiter(AsyncCondition& condition, const boost::asio::any_io_executor& executor);
        ~Waiter();
        Waiter(const Waiter&) = delete;
        Waiter& operator=(const Waiter&) = delete;
        boost::asio::awaitable<void> wake_up();

      private:
        AsyncCondition& condition_;
        std::shared_ptr<Channel> channel_;
        std::list<std::shared_ptr<Channel>>::iterator entry_;
    };

    std::mutex mutex_;
    std::list<std::shared_ptr<Channel>> waiters_;
    std::atomic<std::size_t> waiting_{0};
};

}  // namespace conveyor
