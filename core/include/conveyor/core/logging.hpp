#pragma once

#include <exception>
#include <string>
#include <string_view>

namespace conveyor {

/// Configures the default spdlog logger: stderr, UTC timestamps, the given level (trace … off).
/// Throws std::invalid_argument for an unknown level.
void setup_logging(std::string_view level);

/// A completion handler for co_spawn that logs an escaped exception once instead of losing it.
struct LogFailure {
    std::string what;
    void operator()(const std::exception_ptr& error) const;
};

[[nodiscard]] inline LogFailure log_failure(std::string what) {
    return LogFailure{std::move(what)};
}

}  // namespace conveyor
