#include "conveyor/core/trace.hpp"

#include <gtest/gtest.h>

#include <regex>

namespace conveyor {
namespace {

const std::string kTraceId = "4bf92f3577b34da6a3ce929d0e0e4736";
const std::string kParentId = "00f067aa0ba902b7";
const std::string kHeader = "00-" + kTraceId + "-" + kParentId + "-01";

TEST(TraceContext, AJobIsAChildSpanOfTheIncomingTraceparent) {
    const auto span = TraceContext::start_span(kHeader);
    EXPECT_EQ(span.trace_id, kTraceId);
    EXPECT_EQ(span.parent_span_id, kParentId);
    EXPECT_EQ(span.flags, "01");
    EXPECT_TRUE(std::regex_match(span.span_id, std::regex("[0-9a-f]{16}"))) << span.span_id;
    EXPECT_NE(span.span_id, kParentId);
    EXPECT_EQ(span.traceparent(), "00-" + kTraceId + "-" + span.span_id + "-01");
    EXPECT_NE(TraceContext::start_span(kHeader).span_id, span.span_id) << "each job gets a span of its own";
}

TEST(TraceContext, KeepsTheCallersSampledFlagAndDropsUnknownOnes) {
    const auto unsampled = TraceContext::start_span("00-" + kTraceId + "-" + kParentId + "-00");
    EXPECT_EQ(unsampled.flags, "00");
    EXPECT_EQ(unsampled.trace_id, kTraceId);
    EXPECT_EQ(TraceContext::start_span("00-" + kTraceId + "-" + kParentId + "-03").flags, "01");
    EXPECT_EQ(TraceContext::start_span("00-" + kTraceId + "-" + kParentId + "-fe").flags, "00");
}

TEST(TraceContext, ALaterVersionIsReadByItsVersionZeroFields) {
    for (const std::string& header :
         {"01-" + kTraceId + "-" + kParentId + "-01", "cc-" + kTraceId + "-" + kParentId + "-01-what-comes-next"}) {
        const auto span = TraceContext::start_span(header);
        EXPECT_EQ(span.trace_id, kTraceId) << header;
        EXPECT_EQ(span.parent_span_id, kParentId) << header;
        EXPECT_EQ(span.traceparent().substr(0, 3), "00-") << "we speak version 00";
    }
}

TEST(TraceContext, WithoutAValidHeaderAJobBeginsANewSampledTrace) {
    for (const std::string& header : {
             std::string(), std::string("garbage"),
             "00-" + kTraceId + "-" + kParentId + "-01 ",                 // too long
             "ff-" + kTraceId + "-" + kParentId + "-01",                  // version ff is invalid
             "00-" + kTraceId + "-" + kParentId + "-01-more",             // version 00 has nothing after the flags
             "cc-" + kTraceId + "-" + kParentId + "-01x",                 // a later version's fields follow a '-'
             "0g-" + kTraceId + "-" + kParentId + "-01",                  // version not hex
             "00-4BF92F3577B34DA6A3CE929D0E0E4736-" + kParentId + "-01",  // upper case
             "00-00000000000000000000000000000000-" + kParentId + "-01",  // all-zero trace id
             "00-" + kTraceId + "-0000000000000000-01",                   // all-zero parent id
             "00_" + kTraceId + "_" + kParentId + "_01",                  // separators
             "00-" + kTraceId + "-00f067aa0ba902bg-01",                   // not hex
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
