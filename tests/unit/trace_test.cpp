#include "conveyor/core/trace.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <regex>

namespace conveyor {
namespace {

const std::string kTraceId = "4bf92f3577b34da6a3ce929d0e0e4736";
const std::string kParentId = "00f067aa0ba902b7";
const std::string kHeader = fmt::format("00-{}-{}-01", kTraceId, kParentId);

TEST(TraceContext, AJobIsAChildSpanOfTheIncomingTraceparent) {
    const auto span = TraceContext::start_span(kHeader);
    EXPECT_EQ(span.trace_id, kTraceId);
    EXPECT_EQ(span.parent_span_id, kParentId);
    EXPECT_EQ(span.flags, "01");
    EXPECT_TRUE(std::regex_match(span.span_id, std::regex("[0-9a-f]{16}"))) << span.span_id;
    EXPECT_NE(span.span_id, kParentId);
    EXPECT_EQ(span.traceparent(), fmt::format("00-{}-{}-01", kTraceId, span.span_id));
    EXPECT_NE(TraceContext::start_span(kHeader).span_id, span.span_id) << "each job gets a span of its own";
}

TEST(TraceContext, KeepsTheCallersSampledFlagAndDropsUnknownOnes) {
    const auto unsampled = TraceContext::start_span(fmt::format("00-{}-{}-00", kTraceId, kParentId));
    EXPECT_EQ(unsampled.flags, "00");
    EXPECT_EQ(unsampled.trace_id, kTraceId);
    EXPECT_EQ(TraceContext::start_span(fmt::format("00-{}-{}-03", kTraceId, kParentId)).flags, "01");
    EXPECT_EQ(TraceContext::start_span(fmt::format("00-{}-{}-fe", kTraceId, kParentId)).flags, "00");
}

TEST(TraceContext, ALaterVersionIsReadByItsVersionZeroFields) {
    for (const std::string& header : {fmt::format("01-{}-{}-01", kTraceId, kParentId),
                                      fmt::format("cc-{}-{}-01-what-comes-next", kTraceId, kParentId)}) {
        const auto span = TraceContext::start_span(header);
        EXPECT_EQ(span.trace_id, kTraceId) << header;
        EXPECT_EQ(span.parent_span_id, kParentId) << header;
        EXPECT_EQ(span.traceparent().substr(0, 3), "00-") << "we speak version 00";
    }
}

TEST(TraceContext, WithoutAValidHeaderAJobBeginsANewSampledTrace) {
    for (const std::string& header : {
             std::string(), std::string("garbage"), fmt::format("00-{}-{}-01 ", kTraceId, kParentId),  // too long
             fmt::format("ff-{}-{}-01", kTraceId, kParentId),       // version ff is invalid
             fmt::format("00-{}-{}-01-more", kTraceId, kParentId),  // version 00 has nothing after the flags
             fmt::format("cc-{}-{}-01x", kTraceId, kParentId),      // a later version's fields follow a '-'
             fmt::format("0g-{}-{}-01", kTraceId, kParentId),       // version not hex
             fmt::format("00-4BF92F3577B34DA6A3CE929D0E0E4736-{}-01", kParentId),  // upper case
             fmt::format("00-00000000000000000000000000000000-{}-01", kParentId),  // all-zero trace id
             fmt::format("00-{}-0000000000000000-01", kTraceId),                   // all-zero parent id
             fmt::format("00_{}_{}_01", kTraceId, kParentId),                      // separators
             fmt::format("00-{}-00f067aa0ba902bg-01", kTraceId),                   // not hex
         }) {
        EXPECT_FALSE(Traceparent::parse(header)) << header;
        const auto span = TraceContext::start_span(header);
        EXPECT_TRUE(std::regex_match(span.trace_id, std::regex("[0-9a-f]{32}"))) << header;
        EXPECT_NE(span.trace_id, kTraceId) << header;
        EXPECT_TRUE(span.parent_span_id.empty()) << header;
        EXPECT_EQ(span.flags, "01") << header;
        EXPECT_TRUE(Traceparent::parse(span.traceparent())) << span.traceparent();
    }
}

TEST(TraceContext, NewTracesDiffer) {
    EXPECT_NE(TraceContext::start_span("").trace_id, TraceContext::start_span("").trace_id);
}

}  // namespace
}  // namespace conveyor
