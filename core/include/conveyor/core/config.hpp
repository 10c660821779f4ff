#pragma once

#include <chrono>
#include <string>
#include <string_view>

namespace conveyor {

/// Parses "250ms", "30s", "5m", "1h", "14d" (a bare number means seconds); throws std::invalid_argument otherwise.
[[nodiscard]] std::chrono::milliseconds parse_duration(std::string_view text);

/// RFC 3339 in UTC, "2026-11-22T07:57:42.123Z" (or to the second), whatever the process's TZ: fmt formats a
/// system_clock time in local time, which would shift timestamps that say "Z" by the host's offset.
[[nodiscard]] std::string utc_timestamp(std::chrono::system_clock::time_point at);
[[nodiscard]] std::string utc_timestamp_seconds(std::chrono::sys_seconds at);

/// The whole content of a configuration file; throws std::invalid_argument "cannot read the <what> <path>".
[[nodiscard]] std::string read_config_file(const std::string& path, std::string_view what);

/// This process's identity in logs and dead-letter headers when its --name (CONVEYOR_WORKER_NAME,
/// CONVEYOR_SCHEDULER_NAME) is not given: $POD_NAME or the host name.
[[nodiscard]] std::string default_instance_name();

}  // namespace conveyor
