#include "conveyor/core/logging.hpp"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <ctime>
#include <stdexcept>

#include "conveyor/core/utf8.hpp"

namespace conveyor {

namespace {

std::atomic<LogFormat> current_format{LogFormat::text};
thread_local const LogFields* current_fields = nullptr;

/// Appends `text` as a JSON string. What is not valid UTF-8 (a broken message's id, a server's error) becomes
/// U+FFFD, one per bad byte: the line stays valid JSON and the rest of the text stays readable.
void append_json_string(spdlog::memory_buf_t& out, std::string_view text) {
    out.push_back('"');
    for (std::size_t at = 0; at < text.size(); ++at) {
        const char c = text[at];
        const auto byte = static_cast<unsigned char>(c);
        if (byte >= 0x80) {
            if (const auto length = utf8::sequence_length(text, at); length > 0) {
                out.append(text.substr(at, length));
                at += length - 1;
            } else {
                out.append(utf8::kReplacement);
            }
            continue;
        }
        switch (c) {
            case '"':
                out.append(std::string_view("\\\""));
                break;
            case '\\':
                out.append(std::string_view("\\\\"));
                break;
            case '\n':
                out.append(std::string_view("\\n"));
                break;
            case '\r':
                out.append(std::string_view("\\r"));
                break;
            case '\t':
                out.append(std::string_view("\\t"));
                break;
            default:
                if (byte < 0x20) {
                    fmt::format_to(std::back_inserter(out), "\\u{:04x}", byte);
                } else {
                    out.push_back(c);
                }
        }
    }
    out.push_back('"');
}

void append_field(spdlog::memory_buf_t& out, std::string_view name, std::string_view value) {
    if (value.empty()) {
        return;
    }
    fmt::format_to(std::back_inserter(out), ",\"{}\":", name);
    append_json_string(out, value);
}

std::string_view level_name(spdlog::level::level_enum level) {
    switch (level) {
        case spdlog::level::trace:
            return "trace";
        case spdlog::level::debug:
            return "debug";
        case spdlog::level::info:
            return "info";
        case spdlog::level::warn:
            return "warn";
        case spdlog::level::err:
            return "error";
        case spdlog::level::critical:
            return "critical";
        default:
            return "off";
    }
}

class JsonFormatter final : public spdlog::formatter {
  public:
    void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
        const auto since_epoch = msg.time.time_since_epoch();
        const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
        const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - seconds).count();
        const std::time_t time = seconds.count();
        std::tm utc{};
        gmtime_r(&time, &utc);
        fmt::format_to(std::back_inserter(dest), R"({{"ts":"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z","level":"{}")",
                       utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, millis,
                       level_name(msg.level));
        append_field(dest, "msg", std::string_view(msg.payload.data(), msg.payload.size()));
        if (const auto* fields = current_fields) {
            append_field(dest, "job_id", fields->job_id);
            append_field(dest, "type", fields->type);
            if (fields->attempt > 0) {
                fmt::format_to(std::back_inserter(dest), ",\"attempt\":{}", fields->attempt);
            }
            append_field(dest, "queue", fields->queue);
            append_field(dest, "correlation_id", fields->correlation_id);
            if (const auto* trace = fields->trace) {
                append_field(dest, "trace_id", trace->trace_id);
                append_field(dest, "span_id", trace->span_id);
                append_field(dest, "parent_span_id", trace->parent_span_id);
            }
        }
        dest.append(std::string_view("}\n"));
    }

    [[nodiscard]] std::unique_ptr<spdlog::formatter> clone() const override {
        return std::make_unique<JsonFormatter>();
    }
};

}  // namespace

LogFormat parse_log_format(std::string_view name) {
    if (name == "text") {
        return LogFormat::text;
    }
    if (name == "json") {
        return LogFormat::json;
    }
    throw std::invalid_argument(fmt::format("unknown log format '{}' (text, json)", name));
}

void setup_logging(std::string_view level, LogFormat format) {
    const auto parsed = spdlog::level::from_str(std::string(level));
    // from_str maps anything it does not know to "off"; only "off" itself may mean that.
    if (parsed == spdlog::level::off && level != "off") {
        throw std::invalid_argument(
            fmt::format("unknown log level '{}' (trace, debug, info, warn, error, critical, off)", level));
    }
    // Not registered by name: set_default_logger() swaps it in atomically, so setting up again (tests do) never
    // leaves a moment without a default logger.
    auto logger = std::make_shared<spdlog::logger>("conveyor", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    if (format == LogFormat::json) {
        logger->set_formatter(make_json_formatter());
    } else {
        logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %v", spdlog::pattern_time_type::utc);
    }
    logger->set_level(parsed);
    logger->flush_on(spdlog::level::warn);
    spdlog::set_default_logger(std::move(logger));
    current_format = format;
}

LogFormat log_format() noexcept {
    return current_format;
}

std::unique_ptr<spdlog::formatter> make_json_formatter() {
    return std::make_unique<JsonFormatter>();
}

ScopedLogFields::ScopedLogFields(const LogFields& fields) noexcept : previous_(current_fields) {
    current_fields = &fields;
}

ScopedLogFields::~ScopedLogFields() {
    current_fields = previous_;
}

void LogFailure::operator()(const std::exception_ptr& error) const {
    if (!error) {
        return;
    }
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        spdlog::error("{} failed: {}", what, e.what());
    } catch (...) {
        spdlog::error("{} failed with a non-standard exception", what);
    }
}

}  // namespace conveyor
