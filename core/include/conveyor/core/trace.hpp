#pragma once

#include <optional>
#include <string>
#include <string_view>

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
};

}  // namespace conveyor
