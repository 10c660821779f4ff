#include "conveyor/core/logging.hpp"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <stdexcept>

namespace conveyor {

void setup_logging(std::string_view level) {
    const auto parsed = spdlog::level::from_str(std::string(level));
    // from_str maps anything it does not know to "off"; only "off" itself may mean that.
    if (parsed == spdlog::level::off && level != "off") {
        throw std::invalid_argument(
            fmt::format("unknown log level '{}' (trace, debug, info, warn, error, critical, off)", level));
    }
    auto logger = spdlog::stderr_logger_mt("conveyor");
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %v", spdlog::pattern_time_type::utc);
    logger->set_level(parsed);
    logger->flush_on(spdlog::level::warn);
    spdlog::set_default_logger(std::move(logger));
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
