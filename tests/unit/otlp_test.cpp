#include "conveyor/core/otlp.hpp"

#include <gtest/gtest.h>
#include <prometheus/registry.h>
#include <simdjson.h>

#include <boost/asio/io_context.hpp>

namespace conveyor {
namespace {

using namespace std::chrono_literals;

/// Keeps what it is given.
class KeptSpans : public SpanSink {
  public:
    void record(Span span) noexcept override { spans.push_back(std::move(span)); }
    std::vector<Span> spans;
};

const TraceContext kSampled{"0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "", "01"};

Span finished_span(std::string name, TraceContext context) {
    Span span;
    span.context = std::move(context);
    span.name = std::move(name);
    span.kind = SpanKind::client;
    span.start = std::chrono::system_clock::time_point(1'700'000'000'123'456'789ns);
    span.end = span.start + 1500us;
    span.attributes = {{"http.response.status_code", std::int64_t{201}},
                       {"url.path", std::string("/v1/charges")},
                       {"conveyor.group_commit", true}};
    return span;
}

TEST(Otlp, EncodesSpansAsTheOtlpJsonMappingWantsThem) {
    auto child = finished_span("payment gateway POST charge", TraceContext::start_span(kSampled.traceparent()));
    child.failed = true;
    child.status_message = "answered 503";
    const std::vector<Span> spans{finished_span("orders.place", kSampled), child};
    const auto body = otlp::encode("conveyor-worker", "worker-1", spans);

    simdjson::dom::parser parser;
    simdjson::dom::element request;
    ASSERT_EQ(parser.parse(body).get(request), simdjson::SUCCESS) << body;
    const auto resource = request.at_pointer("/resourceSpans/0/resource/attributes/0");
    EXPECT_EQ(std::string_view(resource["key"]), "service.name");
    EXPECT_EQ(std::string_view(resource.at_pointer("/value/stringValue")), "conveyor-worker");
    EXPECT_EQ(std::string_view(request.at_pointer("/resourceSpans/0/scopeSpans/0/scope/name")), "conveyor");
    const auto root = request.at_pointer("/resourceSpans/0/scopeSpans/0/spans/0");
    EXPECT_EQ(std::string_view(root["traceId"]), kSampled.trace_id);
    EXPECT_EQ(std::string_view(root["spanId"]), kSampled.span_id);
    EXPECT_EQ(root["parentSpanId"].error(), simdjson::NO_SUCH_FIELD) << "a root has no parent";
    EXPECT_EQ(std::int64_t(root["kind"]), 3);
    // Nanoseconds since the epoch, as decimal strings (64-bit integers in OTLP's JSON).
    EXPECT_EQ(std::string_view(root["startTimeUnixNano"]), "1700000000123456789");
    EXPECT_EQ(std::string_view(root["endTimeUnixNano"]), "1700000000124956789");
    EXPECT_EQ(std::string_view(root.at_pointer("/attributes/0/value/intValue")), "201");
    EXPECT_EQ(std::string_view(root.at_pointer("/attributes/1/value/stringValue")), "/v1/charges");
    EXPECT_EQ(bool(root.at_pointer("/attributes/2/value/boolValue")), true);
    EXPECT_EQ(std::int64_t(root.at_pointer("/status/code")), 1);
    const auto failed = request.at_pointer("/resourceSpans/0/scopeSpans/0/spans/1");
    EXPECT_EQ(std::string_view(failed["parentSpanId"]), kSampled.span_id);
    EXPECT_EQ(std::string_view(failed["traceId"]), kSampled.trace_id);
    EXPECT_EQ(std::int64_t(failed.at_pointer("/status/code")), 2);
    EXPECT_EQ(std::string_view(failed.at_pointer("/status/message")), "answered 503");
}

TEST(Otlp, AScopedSpanIsAChildOfItsParentAndRecordedOnceWhenItEnds) {
    KeptSpans sink;
    {
        ScopedSpan span(&sink, kSampled, "smtp send");
        span.set("conveyor.email.template", std::string("order_confirmed"));
        EXPECT_EQ(span.context().trace_id, kSampled.trace_id);
        EXPECT_EQ(span.context().parent_span_id, kSampled.span_id);
        EXPECT_NE(span.context().span_id, kSampled.span_id);
        span.end();
        EXPECT_EQ(sink.spans.size(), 1U);
    }
    ASSERT_EQ(sink.spans.size(), 1U) << "ended once";
    EXPECT_EQ(sink.spans[0].name, "smtp send");
    EXPECT_LE(sink.spans[0].start, sink.spans[0].end);
    ASSERT_EQ(sink.spans[0].attributes.size(), 1U);
}

TEST(Otlp, ATraceNotSampledOrNoSinkRecordsNothing) {
    KeptSpans sink;
    auto unsampled = kSampled;
    unsampled.flags = "00";
    { ScopedSpan span(&sink, unsampled, "db transaction"); }
    { ScopedSpan span(nullptr, kSampled, "db transaction"); }
    EXPECT_TRUE(sink.spans.empty());
    EXPECT_FALSE(unsampled.sampled());
    EXPECT_TRUE(kSampled.sampled());
}

TEST(Otlp, AFullQueueDropsSpansAndCountsThemWithoutBlocking) {
    boost::asio::io_context io;
    prometheus::Registry metrics;
    otlp::Settings settings;
    settings.endpoint = "http://127.0.0.1:9";
    settings.max_queue = 10;
    otlp::Exporter exporter(io.get_executor(), settings, "conveyor-worker", "worker-1", metrics);
    for (int i = 0; i < 25; ++i) {
        exporter.record(finished_span("diag.noop", kSampled));
    }
    double dropped = 0;
    for (const auto& family : metrics.Collect()) {
        if (family.name == "conveyor_trace_spans_dropped_total") {
            for (const auto& sample : family.metric) {
                if (sample.label.at(0).value == "queue_full") {
                    dropped = sample.counter.value;
                }
            }
        }
    }
    EXPECT_EQ(dropped, 15);
}

}  // namespace
}  // namespace conveyor
