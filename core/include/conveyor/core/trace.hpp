#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

/// W3C Trace Context (https://www.w3.org/TR/trace-context/) for jobs: each job runs as a span of the trace its
/// message carries, and everything it causes (the jobs it emits, its HTTP calls) carries that span as parent.
namespace conveyor {

/// The fields of a `traceparent` header: a version, a 32-hex trace id, a 16-hex parent id, 2-hex flags.
struct Traceparent {
    std::string trace_id;
    std::string parent_id;
    std::string flags;

    /// Nothing for a header that is not a valid traceparent (wrong length, separators or case, version ff, an
    /// all-zero id): the specification says such a header is ignored and a new trace begins. A later version
    /// is read by its version-00 fields.
    [[nodiscard]] static std::optional<Traceparent> parse(std::string_view header);
};

/// One job's span: the trace it belongs to, its own span id and the span that caused it.
struct TraceContext {
    std::string trace_id;
    std::string span_id;
    std::string parent_span_id;  ///< empty when the job began a new trace
    std::string flags;

    /// A new span, child of the `incoming` traceparent header, or the root of a new (sampled) trace when the
    /// header is absent or invalid.
    [[nodiscard]] static TraceContext start_span(std::string_view incoming);

    /// The header for what this span causes: the same trace, this span as the parent.
    [[nodiscard]] std::string traceparent() const;

    /// Whether the trace is to be recorded (the sampled flag).
    [[nodiscard]] bool sampled() const noexcept;
};

/// What a span stands for, as OpenTelemetry names it (the numbers are OTLP's).
enum class SpanKind : std::uint8_t { internal = 1, server = 2, client = 3, producer = 4, consumer = 5 };

using SpanAttribute = std::pair<std::string, std::variant<std::string, std::int64_t, bool>>;

/// A finished span: its place in the trace, what it did and when.
struct Span {
    TraceContext context;
    std::string name;
    SpanKind kind = SpanKind::internal;
    std::chrono::system_clock::time_point start;
    std::chrono::system_clock::time_point end;
    std::vector<SpanAttribute> attributes;
    bool failed = false;
    std::string status_message;  ///< why it failed
};

/// Where finished spans go (the OTLP exporter). record() is called on any thread, must not block and must not
/// throw: a span it cannot keep is dropped.
class SpanSink {
  public:
    SpanSink() = default;
    SpanSink(const SpanSink&) = delete;
    SpanSink& operator=(const SpanSink&) = delete;
    virtual ~SpanSink() = default;
    virtual void record(Span span) noexcept = 0;
};

/// A span being timed, child of `parent`: recorded into `sink` when it ends (end(), or when it goes out of scope),
/// unless there is no sink or the trace is not sampled. Pass context().traceparent() on to what it calls.
class ScopedSpan {
  public:
    ScopedSpan(SpanSink* sink, const TraceContext& parent, std::string name, SpanKind kind = SpanKind::internal);
    ScopedSpan(const ScopedSpan&) = delete;
    ScopedSpan& operator=(const ScopedSpan&) = delete;
    ~ScopedSpan() { end(); }

    [[nodiscard]] const TraceContext& context() const noexcept { return span_.context; }
    void set(std::string key, std::variant<std::string, std::int64_t, bool> value);
    /// Marks the span failed, with why.
    void fail(std::string message);
    void end() noexcept;

  private:
    SpanSink* sink_;
    Span span_;
    bool ended_ = false;
};

}  // namespace conveyor
