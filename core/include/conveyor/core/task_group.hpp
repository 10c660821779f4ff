#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/cancellation_state.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <chrono>
#include <list>
#include <string>
#include <vector>

namespace conveyor {

/// Coroutines started together and stopped together. Each runs on a strand of its own under a cancellation signal
/// of its own: cancel() emits every signal on its task's strand (a signal is not thread-safe), and join() waits for
/// the last task to end, woken by it rather than polling. A task's failure is logged once, with its name.
///
/// Tasks see the cancellation in whatever they await (it fails with operation_aborted) and in
/// `co_await boost::asio::this_coro::cancellation_state`; each decides how to wind down. Asio's coroutines throw
/// operation_aborted from any later co_await once cancelled, until `this_coro::reset_cancellation_state()`: a task
/// that has work left after a cancellation resets first. A task that ends by that exception ended as asked, and is
/// not logged as failed.
class TaskGroup {
  public:
    using Strand = boost::asio::strand<boost::asio::any_io_executor>;

    /// One running task: its strand, and its signal, which only code running on that strand may emit.
    class Task {
      public:
        explicit Task(Strand strand) : strand_(std::move(strand)) {}
        [[nodiscard]] const Strand& strand() const noexcept { return strand_; }
        [[nodiscard]] boost::asio::cancellation_signal& signal() noexcept { return signal_; }

      private:
        Strand strand_;
        boost::asio::cancellation_signal signal_;
    };

    explicit TaskGroup(const boost::asio::any_io_executor& executor);
    TaskGroup(const TaskGroup&) = delete;
    TaskGroup& operator=(const TaskGroup&) = delete;
    /// Tasks must have ended (join() returned true) before the group goes.
    ~TaskGroup() = default;

    /// Starts `task` on a new strand of the group's executor; `name` is for the log. `make` receives the task's
    /// handle (for code on its strand that cancels it, like a watchdog) and returns the coroutine to run. `make`
    /// is a plain lambda that calls a coroutine function: a coroutine lambda's captures would die with it here.
    template <typename MakeTask>
    Task& spawn(std::string name, MakeTask&& make) {
        return spawn_on(boost::asio::make_strand(executor_), std::move(name), std::forward<MakeTask>(make));
    }

    /// Starts a task on the strand of another (a companion that must not run beside it, like its watchdog).
    template <typename MakeTask>
    Task& spawn_on(Strand strand, std::string name, MakeTask&& make) {
        auto& task = tasks_.emplace_back(std::move(strand));
        start(std::move(name), task, std::forward<MakeTask>(make)(task));
        return task;
    }

    /// Emits `type` on every task's signal, each on its strand.
    void cancel(boost::asio::cancellation_type type = boost::asio::cancellation_type::terminal);

    /// Waits until every task has ended or `deadline` passes; returns whether they all ended. One join at a time.
    boost::asio::awaitable<bool> join(std::chrono::steady_clock::time_point deadline);

    /// Tasks started and not ended yet.
    [[nodiscard]] std::size_t running() const noexcept { return running_; }

  private:
    void start(std::string name, Task& task, boost::asio::awaitable<void> coroutine);
    boost::asio::awaitable<bool> wait_for_all(std::chrono::steady_clock::time_point deadline);

    boost::asio::any_io_executor executor_;
    std::list<Task> tasks_;  ///< a list: tasks keep their address
    std::atomic<std::size_t> running_{0};
    /// join() waits on its strand, on a timer set to its deadline, which the task that ends last cancels there.
    /// (Not a channel: in Asio 1.24 a receive cancelled by its deadline makes the next try_send fail, issue 1241.)
    Strand join_strand_;
    boost::asio::steady_timer* join_timer_ = nullptr;  ///< only touched on join_strand_
};

/// Whether a coroutine's cancellation state (`co_await boost::asio::this_coro::cancellation_state`) records a
/// cancellation. Read the state rather than awaiting a helper: once cancelled, awaiting anything throws.
[[nodiscard]] inline bool cancelled(const boost::asio::cancellation_state& state) noexcept {
    return state.cancelled() != boost::asio::cancellation_type::none;
}

/// Waits until `at`; false if the calling coroutine gets cancelled meanwhile: a task's loop ends when it returns
/// false. Await it in a statement of its own, never in a loop's condition: g++ 12 destroys an awaitable there twice.
/// Awaited once cancelled, it throws operation_aborted, as any co_await does (or returns false at once, under
/// `this_coro::throw_if_cancelled(false)`).
boost::asio::awaitable<bool> wait_until(std::chrono::steady_clock::time_point at);

/// Runs the loops side by side until all have ended; a cancellation reaches each. If one fails, the others are
/// cancelled and its exception is rethrown; if they were all cancelled, operation_aborted is. Unlike awaitable
/// operators' `&&`, which throws multiple_exceptions holding only the first loop's exception when several end with
/// one (at every cancellation, and hiding a real failure behind a sibling's operation_aborted).
boost::asio::awaitable<void> run_side_by_side(std::vector<boost::asio::awaitable<void>> loops);

}  // namespace conveyor
