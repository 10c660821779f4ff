#pragma once

#include <spdlog/formatter.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <string_view>

#include "conveyor/core/trace.hpp"

namespace conveyor {

/// text: one human-readable line per event. json: one JSON object per line, for log pipelines (Loki, ELK,
/// Cloud Logging) that index fields rather than parse prose.
enum class LogFormat { text, json };

/// Throws std::invalid_argument for anything but "text" or "json".
[[nodiscard]] LogFormat parse_log_format(std::string_view name);

/// Configures the default spdlog logger: stderr, UTC timestamps, the given level (trace … off) and format.
/// Throws std::invalid_argument for an unknown level.
void setup_logging(std::string_view level, LogFormat format = LogFormat::text);

/// The format setup_logging() chose.
[[nodiscard]] LogFormat log_format() noexcept;

/// The JSON line format: {"ts", "level", "msg", and the fields of the job being logged, if any}.
[[nodiscard]] std::unique_ptr<spdlog::formatter> make_json_formatter();

/// What a line about one job carries besides its message. Views: the strings must outlive the lines logged.
struct LogFields {
    std::string_view job_id;
    std::string_view type;
    std::string_view correlation_id;
    std::string_view queue;
    std::uint32_t attempt = 0;  ///< 0: not known (a message too broken to read)
    const TraceContext* trace = nullptr;
};

/// Attaches `fields` to what this thread logs while it lives; the JSON format prints them as fields.
class ScopedLogFields {
  public:
    explicit ScopedLogFields(const LogFields& fields) noexcept;
    ~ScopedLogFields();
    ScopedLogFields(const ScopedLogFields&) = delete;
    ScopedLogFields& operator=(const ScopedLogFields&) = delete;

  private:
    const LogFields* previous_;
};

/// A completion handler for co_spawn that logs an escaped exception once instead of losing it.
struct LogFailure {
    std::string what;
    void operator()(const std::exception_ptr& error) const;
};

[[nodiscard]] inline LogFailure log_failure(std::string what) {
    return LogFailure{std::move(what)};
}

}  // namespace conveyor
