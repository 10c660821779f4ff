#pragma once

#include <chrono>
#include <string>
#include <string_view>

namespace conveyor {

/// Parses "250ms", "30s", "5m", "1h", "14d" (a bare number means seconds); throws std::invalid_argument otherwise.
[[nodiscard]] std::chrono::milliseconds parse_duration(std::string_view text);

/// This process's identity in logs and dead-letter headers: $CONVEYOR_WORKER_NAME, $POD_NAME or the host name.
[[nodiscard]] std::string default_instance_name();

}  // namespace conveyor
