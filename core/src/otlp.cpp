#include "conveyor/core/otlp.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>

#include "conveyor/core/redaction.hpp"

namespace conveyor::otlp {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace {

constexpr std::size_t kLoggedBodyBytes = 200;

std::string nanoseconds(std::chrono::system_clock::time_point at) {
    return std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(at.time_since_epoch()).count());
}

boost::json::object any_value(const std::variant<std::string, std::int64_t, bool>& value) {
    if (const auto* text = std::get_if<std::string>(&value)) {
        return {{"stringValue", *text}};
    }
    if (const auto* number = std::get_if<std::int64_t>(&value)) {
        // OTLP's JSON carries 64-bit integers as decimal strings.
        return {{"intValue", std::to_string(*number)}};
    }
    return {{"boolValue", std::get<bool>(value)}};
}

boost::json::array attributes(const std::vector<SpanAttribute>& list) {
    boost::json::array encoded;
    for (const auto& [key, value] : list) {
        encoded.push_back({{"key", key}, {"value", any_value(value)}});
    }
    return encoded;
}

boost::json::object encode_span(const Span& span) {
    constexpr int kStatusOk = 1;
    constexpr int kStatusError = 2;
    boost::json::object status{{"code", span.failed ? kStatusError : kStatusOk}};
    if (span.failed && !span.status_message.empty()) {
        status["message"] = span.status_message;
    }
    boost::json::object encoded{{"traceId", span.context.trace_id},
                                {"spanId", span.context.span_id},
                                {"name", span.name},
                                {"kind", static_cast<int>(span.kind)},
                                {"startTimeUnixNano", nanoseconds(span.start)},
                                {"endTimeUnixNano", nanoseconds(span.end)},
                                {"attributes", attributes(span.attributes)},
                                {"status", std::move(status)}};
    if (!span.context.parent_span_id.empty()) {
        encoded["parentSpanId"] = span.context.parent_span_id;
    }
    return encoded;
}

http::ClientSettings client_settings(const Settings& settings) {
    http::ClientSettings client;
    client.base_url = settings.endpoint;
    client.timeout = settings.timeout;
    client.max_idle_connections = 2;
    client.user_agent = "conveyor-otlp";
    return client;
}

}  // namespace

std::string encode(std::string_view service_name, std::string_view instance_id, std::span<const Span> spans) {
    boost::json::array encoded;
    for (const auto& span : spans) {
        encoded.push_back(encode_span(span));
    }
    const std::vector<SpanAttribute> resource{{"service.name", std::string(service_name)},
                                              {"service.instance.id", std::string(instance_id)}};
    boost::json::object request{
        {"resourceSpans", boost::json::array{{{"resource", {{"attributes", attributes(resource)}}},
                                              {"scopeSpans", boost::json::array{{{"scope", {{"name", "conveyor"}}},
                                                                                 {"spans", std::move(encoded)}}}}}}}};
    return boost::json::serialize(request);
}

Exporter::Exporter(asio::any_io_executor executor, Settings settings, std::string service_name, std::string instance_id,
                   prometheus::Registry& metrics)
    : settings_(std::move(settings)),
      service_name_(std::move(service_name)),
      instance_id_(std::move(instance_id)),
      client_(std::move(executor), client_settings(settings_)),
      exported_(prometheus::BuildCounter()
                    .Name("conveyor_trace_spans_exported_total")
                    .Help("Spans the OTLP receiver accepted")
                    .Register(metrics)
                    .Add({})),
      dropped_(prometheus::BuildCounter()
                   .Name("conveyor_trace_spans_dropped_total")
                   .Help("Spans not exported: the queue was full (queue_full) or their export request failed "
                         "(export_failed)")
                   .Register(metrics)),
      dropped_queue_full_(dropped_.Add({{"reason", "queue_full"}})),
      dropped_export_failed_(dropped_.Add({{"reason", "export_failed"}})) {
    queue_.reserve(settings_.max_batch);
}

void Exporter::record(Span span) noexcept {
    std::size_t queued = 0;  // none: the span was not kept
    try {
        const std::lock_guard lock(mutex_);
        if (queue_.size() < settings_.max_queue) {
            queue_.push_back(std::move(span));
            queued = queue_.size();
            queued_.store(queued);
        }
    } catch (...) {
        queued = 0;  // out of memory: dropped like a span that finds the queue full
    }
    if (queued == 0) {
        dropped_queue_full_.Increment();
    } else if (queued >= settings_.max_batch) {
        batch_full_.notify_all();
    }
}

std::vector<Span> Exporter::take_batch() {
    const std::lock_guard lock(mutex_);
    std::vector<Span> batch;
    if (queue_.size() <= settings_.max_batch) {
        batch.swap(queue_);
    } else {
        const auto split = queue_.begin() + static_cast<std::ptrdiff_t>(settings_.max_batch);
        batch.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(split));
        queue_.erase(queue_.begin(), split);
    }
    queued_.store(queue_.size());
    return batch;
}

asio::awaitable<void> Exporter::send(std::vector<Span> batch) {
    http::Request request;
    request.method = "POST";
    request.path = "/v1/traces";
    request.body = encode(service_name_, instance_id_, batch);
    std::string failure;
    try {
        const auto response = co_await client_.send(request);
        if (response.status >= 200 && response.status < 300) {
            exported_.Increment(static_cast<double>(batch.size()));
            if (failing_) {
                spdlog::info("otlp: {} accepts spans again", redacted_url(settings_.endpoint));
                failing_ = false;
            }
            co_return;
        }
        failure = fmt::format("answered {}: {}", response.status, response.body.substr(0, kLoggedBodyBytes));
    } catch (const http::TransportError& e) {
        failure = e.what();
    }
    dropped_export_failed_.Increment(static_cast<double>(batch.size()));
    if (!failing_) {
        // Logged once per outage: a receiver that is down would otherwise fill the log with one line a second.
        spdlog::warn("otlp: exporting {} spans to {} failed ({}); spans are dropped until it recovers", batch.size(),
                     redacted_url(settings_.endpoint), failure);
        failing_ = true;
    }
}

asio::awaitable<void> Exporter::run() {
    asio::steady_timer interval(co_await asio::this_coro::executor);
    try {
        for (;;) {
            interval.expires_after(settings_.interval);
            co_await (interval.async_wait(asio::use_awaitable) ||
                      batch_full_.wait([this] { return queued_.load() >= settings_.max_batch; }));
            if (auto batch = take_batch(); !batch.empty()) {
                co_await send(std::move(batch));
            }
        }
    } catch (const boost::system::system_error& e) {
        if (e.code() != asio::error::operation_aborted) {
            throw;
        }
    }
    // Stopped: what waits goes once, so a draining worker's last spans are not lost.
    co_await asio::this_coro::reset_cancellation_state();
    if (auto batch = take_batch(); !batch.empty()) {
        co_await send(std::move(batch));
    }
}

}  // namespace conveyor::otlp
