#pragma once

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/async_condition.hpp"
#include "conveyor/core/http_client.hpp"
#include "conveyor/core/trace.hpp"

/// Spans out to an OpenTelemetry collector, Jaeger or any OTLP receiver, over OTLP/HTTP with the JSON encoding
/// (https://opentelemetry.io/docs/specs/otlp/). Debian 12 packages no OpenTelemetry C++ SDK: this is the part of one
/// Conveyor needs, a batching exporter that never holds up the work it traces.
namespace conveyor::otlp {

struct Settings {
    /// The receiver's OTLP/HTTP base URL (CONVEYOR_OTLP_ENDPOINT, e.g. http://collector:4318): spans go to its
    /// /v1/traces. Empty: nothing is exported.
    std::string endpoint;
    /// Spans waiting to be sent at most; a span that finds the queue full is dropped, and counted.
    std::size_t max_queue = 2048;
    /// Spans per request at most.
    std::size_t max_batch = 512;
    /// How long a span waits for its batch to fill before the batch goes anyway.
    std::chrono::milliseconds interval{1000};
    /// Deadline of one export request.
    std::chrono::milliseconds timeout{10'000};
};

/// The body of an OTLP/HTTP JSON export request (ExportTraceServiceRequest) carrying `spans` of one service: ids
/// in lower-case hex, times in nanoseconds since the epoch as decimal strings, kinds and status codes as OTLP's
/// numbers.
[[nodiscard]] std::string encode(std::string_view service_name, std::string_view instance_id,
                                 std::span<const Span> spans);

/// Exports spans in batches from a bounded queue. record() may be called from any thread; run() sends.
class Exporter final : public SpanSink {
  public:
    /// Throws std::invalid_argument for an endpoint that is not an http:// or https:// URL.
    Exporter(boost::asio::any_io_executor executor, Settings settings, std::string service_name,
             std::string instance_id, prometheus::Registry& metrics);

    /// Queues the span for the next batch, or drops it (counted) when the queue is full. Never blocks.
    void record(Span span) noexcept override;

    /// Sends a batch each interval, or as soon as one is full, until cancelled; then sends what waits, once, within
    /// the request timeout. A batch whose request fails is dropped (counted): retrying it would hold the queue that
    /// the spans of the work going on need.
    boost::asio::awaitable<void> run();

  private:
    std::vector<Span> take_batch();
    boost::asio::awaitable<void> send(std::vector<Span> batch);

    Settings settings_;
    std::string service_name_;
    std::string instance_id_;
    http::Client client_;
    std::mutex mutex_;
    std::vector<Span> queue_;
    std::atomic<std::size_t> queued_{0};
    AsyncCondition batch_full_;
    bool failing_ = false;
    prometheus::Counter& exported_;
    prometheus::Family<prometheus::Counter>& dropped_;
    prometheus::Counter& dropped_queue_full_;
    prometheus::Counter& dropped_export_failed_;
};

}  // namespace conveyor::otlp
