#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "conveyor/admin/job_history.hpp"
#include "conveyor/core/amqp.hpp"
#include "conveyor/core/envelope.hpp"
#include "conveyor/core/pg.hpp"
#include "conveyor/core/trace.hpp"

/// The worker's side of the job history: events wait in a bounded buffer and one background task writes them in
/// batches, so recording costs a job a lock and a push, never a round trip. While PostgreSQL is away the buffer
/// holds what it can; past its bound, events are dropped and counted (conveyor_history_dropped_total).
namespace conveyor::worker {

class HistoryRecorder {
  public:
    struct Settings {
        bool enabled = true;
        std::size_t max_buffered = 100'000;
        std::size_t batch = 2'000;  ///< events per INSERT; a flush writes batch after batch until few are left
        std::chrono::milliseconds flush_interval{200};
        std::chrono::milliseconds retention{std::chrono::hours(24 * 7)};
        std::string worker;  ///< this worker's name, on the rows it writes
    };
    struct Metrics {
        prometheus::Counter& written;
        prometheus::Counter& dropped;
        prometheus::Gauge& buffered;
    };

    HistoryRecorder(pg::Pool& pool, Settings settings, Metrics metrics);

    [[nodiscard]] bool enabled() const noexcept { return settings_.enabled; }

    /// An attempt's place among the running ones, until the guard goes.
    class Running {
      public:
        Running(HistoryRecorder* recorder, std::uint64_t key) noexcept : recorder_(recorder), key_(key) {}
        Running(Running&& other) noexcept : recorder_(std::exchange(other.recorder_, nullptr)), key_(other.key_) {}
        Running& operator=(Running&&) = delete;
        Running(const Running&) = delete;
        Running& operator=(const Running&) = delete;
        ~Running();

      private:
        HistoryRecorder* recorder_;
        std::uint64_t key_;
    };

    /// Notes that an attempt started. It is written only if it still runs at a flush: an attempt that ends sooner
    /// is one row, its end. Costs a lock and a map entry, nothing copied: the envelope, queue and trace are read
    /// only if the row is written, and must outlive the guard. Thread-safe.
    [[nodiscard]] Running record_start(const Envelope& envelope, const std::string& queue, const TraceContext& trace,
                                       std::chrono::system_clock::time_point started_at);

    /// Queues an event (an attempt's end, or its progress) for the next batch; drops it (and counts it) if the
    /// buffer is full. Thread-safe.
    void record(job_history::Event event);

    /// Writes batches until cancelled, then what is left, for at most `final_flush`. Keeps the partitions and the
    /// retention as it goes.
    boost::asio::awaitable<void> run(std::chrono::milliseconds final_flush);

  private:
    /// Writes one batch; false if the database refused it (the batch goes back to the buffer's front).
    boost::asio::awaitable<bool> flush();
    boost::asio::awaitable<void> insert(std::vector<job_history::Event>& batch);
    boost::asio::awaitable<void> maintain();
    /// Takes the starts of attempts that have been running for a flush interval, then up to a batch.
    std::vector<job_history::Event> take_batch();
    void put_back(std::vector<job_history::Event> batch);
    std::size_t backlog();

    pg::Pool& pool_;
    Settings settings_;
    Metrics metrics_;
    std::mutex mutex_;
    std::vector<job_history::Event> buffer_;
    struct Started {
        const Envelope* envelope;
        const std::string* queue;
        const TraceContext* trace;
        std::chrono::system_clock::time_point started_at;
    };
    std::unordered_map<std::uint64_t, Started> started_;  ///< until the attempt's guard goes or its row is taken
    std::uint64_t next_key_ = 0;
    std::chrono::steady_clock::time_point next_maintenance_{};
};

/// An event of `envelope`'s run that started at `started_at` on `queue`.
[[nodiscard]] job_history::Event history_event(const Envelope& envelope, std::string_view queue,
                                               const TraceContext& trace, std::string_view worker, std::string state,
                                               std::chrono::system_clock::time_point started_at);

/// The dead-lettering of a delivery that never ran (unreadable, no handler, invalid payload, poison): `type` is
/// the metrics' label, "unknown" for a message that did not parse.
[[nodiscard]] job_history::Event refusal_event(const amqp::Delivery& delivery, std::string_view type,
                                               std::uint32_t attempts, const TraceContext& trace,
                                               std::string_view worker, std::string error);

}  // namespace conveyor::worker
