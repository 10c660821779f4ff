#include "conveyor/core/logging.hpp"

#include <gtest/gtest.h>
#include <simdjson.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <regex>
#include <sstream>

#include "conveyor/core/job.hpp"

namespace conveyor {
namespace {

/// Routes the default logger, in `format`, into a string for the test's duration.
class CapturedLog {
  public:
    explicit CapturedLog(LogFormat format) {
        setup_logging("debug", format);
        auto sink = std::make_shared<spdlog::sinks::ostream_sink_st>(stream_);
        if (format == LogFormat::json) {
            sink->set_formatter(make_json_formatter());
        } else {
            sink->set_pattern("%l %v");
        }
        auto& sinks = spdlog::default_logger()->sinks();
        sinks.clear();
        sinks.push_back(std::move(sink));
    }
    ~CapturedLog() { setup_logging("warn", LogFormat::text); }
    CapturedLog(const CapturedLog&) = delete;
    CapturedLog& operator=(const CapturedLog&) = delete;

    [[nodiscard]] std::string text() const { return stream_.str(); }

  private:
    std::ostringstream stream_;
};

std::string field(simdjson::dom::object line, const char* name) {
    std::string_view value;
    return line[name].get(value) == simdjson::SUCCESS ? std::string(value) : std::string("<absent>");
}

TEST(JsonLogs, AJobLineCarriesTheJobsFieldsAndItsSpan) {
    const CapturedLog captured(LogFormat::json);
    const auto trace = TraceContext::start_span("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    const JobLogger log({.job_id = "job-7",
                         .type = "payments.charge",
                         .correlation_id = "order-42",
                         .queue = "conveyor.payments",
                         .attempt = 3,
                         .trace = &trace});
    log.warn("attempt {} failed: {}", 3, "gateway said \"no\"\n\tand hung up\x01");

    simdjson::dom::parser parser;
    simdjson::dom::object line;
    ASSERT_EQ(parser.parse(captured.text()).get(line), simdjson::SUCCESS) << captured.text();
    EXPECT_TRUE(std::regex_match(field(line, "ts"), std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")))
        << field(line, "ts");
    EXPECT_EQ(field(line, "level"), "warn");
    EXPECT_EQ(field(line, "msg"), "attempt 3 failed: gateway said \"no\"\n\tand hung up\x01");
    EXPECT_EQ(field(line, "job_id"), "job-7");
    EXPECT_EQ(field(line, "type"), "payments.charge");
    EXPECT_EQ(field(line, "queue"), "conveyor.payments");
    EXPECT_EQ(field(line, "correlation_id"), "order-42");
    EXPECT_EQ(field(line, "trace_id"), "4bf92f3577b34da6a3ce929d0e0e4736");
    EXPECT_EQ(field(line, "span_id"), trace.span_id);
    EXPECT_EQ(field(line, "parent_span_id"), "00f067aa0ba902b7");
    std::int64_t attempt = 0;
    EXPECT_EQ(line["attempt"].get(attempt), simdjson::SUCCESS);
    EXPECT_EQ(attempt, 3);
    const auto text = captured.text();
    EXPECT_EQ(text.back(), '\n');
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << "one line per event";
}

TEST(JsonLogs, OtherLinesHaveNoJobFieldsAndBrokenUtf8StaysValidJson) {
    const CapturedLog captured(LogFormat::json);
    spdlog::error("could not parse message id '{}' ({})", std::string_view("ab\xff\xfe", 4),
                  "caf\xc3\xa9 \xe2\x82\xac \xed\xa0\x80 \xc3");

    simdjson::dom::parser parser;
    simdjson::dom::object line;
    ASSERT_EQ(parser.parse(captured.text()).get(line), simdjson::SUCCESS) << captured.text();
    EXPECT_EQ(field(line, "level"), "error");
    // Each bad byte (0xff, 0xfe, a surrogate's three, a cut-off sequence) is U+FFFD; good UTF-8 around it stays.
    EXPECT_EQ(field(line, "msg"),
              "could not parse message id 'ab\ufffd\ufffd' (caf\u00e9 \u20ac "
              "\ufffd\ufffd\ufffd \ufffd)");
    EXPECT_EQ(field(line, "job_id"), "<absent>");
    EXPECT_EQ(field(line, "trace_id"), "<absent>");
}

TEST(TextLogs, AJobLineStartsWithTheJobsIds) {
    const CapturedLog captured(LogFormat::text);
    const JobLogger log({.job_id = "job-7",
                         .type = "diag.fail",
                         .correlation_id = "",
                         .queue = "conveyor.diag",
                         .attempt = 1,
                         .trace = nullptr});
    log.info("ran");
    EXPECT_EQ(captured.text(), "info job=job-7 type=diag.fail correlation=- ran\n");
}

TEST(Logging, UnknownFormatsAreRefusedByName) {
    EXPECT_EQ(parse_log_format("json"), LogFormat::json);
    EXPECT_EQ(parse_log_format("text"), LogFormat::text);
    try {
        (void)parse_log_format("xml");
        FAIL() << "xml accepted";
    } catch (const std::invalid_argument& e) {
        EXPECT_STREQ(e.what(), "unknown log format 'xml' (text, json)");
    }
}

}  // namespace
}  // namespace conveyor
