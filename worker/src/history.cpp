#include "history.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "conveyor/core/task_group.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kMaintenanceInterval = std::chrono::hours(1);
constexpr auto kRetryAfterFailure = std::chrono::seconds(1);

}  // namespace

job_history::Event history_event(const Envelope& envelope, std::string_view queue, const TraceContext& trace,
                                 std::string_view worker, std::string state,
                                 std::chrono::system_clock::time_point started_at) {
    return {.job_id = envelope.job_id,
            .attempt = envelope.attempt,
            .state = std::move(state),
            .type = envelope.type,
            .queue = std::string(queue),
            .worker = std::string(worker),
            .correlation_id = envelope.correlation_id,
            .trace_id = trace.trace_id,
            .enqueued_at = envelope.enqueued_at,
            .started_at = started_at,
            .ended_at = std::nullopt,
            .error = {},
            .progress = std::nullopt,
            .progress_note = {},
            .recorded_at = std::chrono::system_clock::now()};
}

job_history::Event refusal_event(const amqp::Delivery& delivery, std::string_view type, std::uint32_t attempts,
                                 const TraceContext& trace, std::string_view worker, std::string error) {
    const auto now = std::chrono::system_clock::now();
    const auto& properties = delivery.message.properties;
    return {.job_id = properties.message_id,
            .attempt = std::max(attempts, 1U),
            .state = "dead_lettered",
            .type = std::string(type == "unknown" ? std::string_view(delivery.message.routing_key) : type),
            .queue = delivery.queue,
            .worker = std::string(worker),
            .correlation_id = properties.correlation_id,
            .trace_id = trace.trace_id,
            .enqueued_at = std::nullopt,
            .started_at = now,
            .ended_at = now,
            .error = std::move(error),
            .progress = std::nullopt,
            .progress_note = {},
            .recorded_at = now};
}

HistoryRecorder::HistoryRecorder(pg::Pool& pool, Settings settings, Metrics metrics)
    : pool_(pool), settings_(settings), metrics_(metrics) {}

HistoryRecorder::Running::~Running() {
    if (recorder_ != nullptr) {
        const std::lock_guard lock(recorder_->mutex_);
        recorder_->started_.erase(key_);
    }
}

HistoryRecorder::Running HistoryRecorder::record_start(const Envelope& envelope, const std::string& queue,
                                                       const TraceContext& trace,
                                                       std::chrono::system_clock::time_point started_at) {
    if (!settings_.enabled) {
        return {nullptr, 0};
    }
    const std::lock_guard lock(mutex_);
    const auto key = next_key_++;
    started_.emplace(key, Started{&envelope, &queue, &trace, started_at});
    return {this, key};
}

void HistoryRecorder::record(job_history::Event event) {
    if (!settings_.enabled) {
        return;
    }
    const std::lock_guard lock(mutex_);
    if (buffer_.size() >= settings_.max_buffered) {
        metrics_.dropped.Increment();
        return;
    }
    buffer_.push_back(std::move(event));
}

std::vector<job_history::Event> HistoryRecorder::take_batch() {
    const auto running_since = std::chrono::system_clock::now() - settings_.flush_interval;
    std::vector<job_history::Event> batch;
    const std::lock_guard lock(mutex_);
    for (auto it = started_.begin(); it != started_.end();) {
        const auto& run = it->second;
        if (run.started_at <= running_since) {
            batch.push_back(
                history_event(*run.envelope, *run.queue, *run.trace, settings_.worker, "running", run.started_at));
            it = started_.erase(it);
        } else {
            ++it;
        }
    }
    const auto count = std::min(buffer_.size(), settings_.batch);
    batch.insert(batch.end(), std::make_move_iterator(buffer_.begin()),
                 std::make_move_iterator(buffer_.begin() + static_cast<std::ptrdiff_t>(count)));
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(count));
    metrics_.buffered.Set(static_cast<double>(buffer_.size()));
    return batch;
}

std::size_t HistoryRecorder::backlog() {
    const std::lock_guard lock(mutex_);
    return buffer_.size();
}

void HistoryRecorder::put_back(std::vector<job_history::Event> batch) {
    const std::lock_guard lock(mutex_);
    // What came in meanwhile stays behind the batch; past the bound, the newest go.
    batch.insert(batch.end(), std::make_move_iterator(buffer_.begin()), std::make_move_iterator(buffer_.end()));
    if (batch.size() > settings_.max_buffered) {
        metrics_.dropped.Increment(static_cast<double>(batch.size() - settings_.max_buffered));
        batch.resize(settings_.max_buffered);
    }
    buffer_ = std::move(batch);
    metrics_.buffered.Set(static_cast<double>(buffer_.size()));
}

asio::awaitable<void> HistoryRecorder::insert(std::vector<job_history::Event>& batch) {
    try {
        co_await job_history::insert(pool_, batch);
        co_return;
    } catch (const pg::Error& e) {
        if (!job_history::is_missing_partition(e)) {
            throw;
        }
    }
    // A worker whose clock passed the partitions made ahead (or a database migrated long ago) makes them now.
    co_await maintain();
    co_await job_history::insert(pool_, batch);
}

asio::awaitable<bool> HistoryRecorder::flush() {
    auto batch = take_batch();
    if (batch.empty()) {
        co_return true;
    }
    std::string failure;
    try {
        co_await insert(batch);
        metrics_.written.Increment(static_cast<double>(batch.size()));
    } catch (const std::exception& e) {
        failure = e.what();
    }
    if (failure.empty()) {
        co_return true;
    }
    // A shutdown's cancellation interrupts a write as any failure does; the final flush tries again, unannounced.
    const auto state = co_await asio::this_coro::cancellation_state;
    if (!cancelled(state)) {
        spdlog::warn("job history: could not write {} events ({}); keeping them to try again", batch.size(), failure);
    }
    put_back(std::move(batch));
    co_return false;
}

asio::awaitable<void> HistoryRecorder::maintain() {
    next_maintenance_ = Clock::now() + kMaintenanceInterval;
    const auto dropped = co_await job_history::maintain(pool_, settings_.retention);
    if (dropped > 0) {
        spdlog::info("job history: dropped {} day partitions past the retention of {} h", dropped,
                     std::chrono::duration_cast<std::chrono::hours>(settings_.retention).count());
    }
}

asio::awaitable<void> HistoryRecorder::run(std::chrono::milliseconds final_flush) {
    if (!settings_.enabled) {
        co_return;
    }
    bool running = true;
    while (running) {
        bool written = true;
        try {
            if (Clock::now() >= next_maintenance_) {
                co_await maintain();
            }
            written = co_await flush();
            // Faster than a batch an interval, jobs leave more behind than one flush takes: write on at once.
            while (written && backlog() >= settings_.batch) {
                written = co_await flush();
            }
        } catch (const std::exception& e) {
            written = false;
            spdlog::warn("job history: {}", e.what());
        }
        // Checked before waiting too: once cancelled, awaiting anything throws.
        const auto before = co_await asio::this_coro::cancellation_state;
        if (cancelled(before)) {
            break;
        }
        asio::steady_timer timer(co_await asio::this_coro::executor,
                                 written ? settings_.flush_interval : kRetryAfterFailure);
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
        const auto after = co_await asio::this_coro::cancellation_state;
        running = !cancelled(after);
    }
    co_await asio::this_coro::reset_cancellation_state();
    const auto deadline = Clock::now() + final_flush;
    bool progressing = true;
    while (progressing && Clock::now() < deadline && backlog() > 0) {
        progressing = co_await flush();
    }
    const std::lock_guard lock(mutex_);
    if (!buffer_.empty()) {
        metrics_.dropped.Increment(static_cast<double>(buffer_.size()));
        spdlog::warn("job history: {} events not written at shutdown (the database was away)", buffer_.size());
    }
}

}  // namespace conveyor::worker
