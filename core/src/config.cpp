#include "conveyor/core/config.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <charconv>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace conveyor {

namespace {

std::string utc_date_time(std::chrono::sys_seconds at) {
    const auto day = std::chrono::floor<std::chrono::days>(at);
    const std::chrono::year_month_day date(day);
    const std::chrono::hh_mm_ss time(at - day);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", static_cast<int>(date.year()),
                       static_cast<unsigned>(date.month()), static_cast<unsigned>(date.day()), time.hours().count(),
                       time.minutes().count(), time.seconds().count());
}

}  // namespace

std::string utc_timestamp(std::chrono::system_clock::time_point at) {
    const auto millis = std::chrono::floor<std::chrono::milliseconds>(at);
    const auto seconds = std::chrono::floor<std::chrono::seconds>(millis);
    return fmt::format("{}.{:03}Z", utc_date_time(seconds), (millis - seconds).count());
}

std::string utc_timestamp_seconds(std::chrono::sys_seconds at) {
    return utc_date_time(at) + "Z";
}

std::chrono::milliseconds parse_duration(std::string_view text) {
    std::int64_t value = 0;
    const auto* begin = text.data();
    const auto* end = text.data() + text.size();
    const auto [rest, error] = std::from_chars(begin, end, value);
    if (error != std::errc{} || rest == begin || value < 0) {
        throw std::invalid_argument(
            fmt::format("invalid duration '{}': expected a non-negative number with unit ms, s, m, h or d", text));
    }
    const std::string_view unit(rest, static_cast<std::size_t>(end - rest));
    std::int64_t scale = 0;
    if (unit == "ms") {
        scale = 1;
    } else if (unit.empty() || unit == "s") {
        scale = 1000;
    } else if (unit == "m") {
        scale = 60'000;
    } else if (unit == "h") {
        scale = 3'600'000;
    } else if (unit == "d") {
        scale = 86'400'000;
    } else {
        throw std::invalid_argument(
            fmt::format("invalid duration '{}': unknown unit '{}' (ms, s, m, h, d)", text, unit));
    }
    if (value > INT64_MAX / scale) {
        throw std::invalid_argument(fmt::format("invalid duration '{}': too large", text));
    }
    return std::chrono::milliseconds(value * scale);
}

std::string default_instance_name() {
    if (const char* pod = std::getenv("POD_NAME"); pod != nullptr && *pod != '\0') {
        return pod;
    }
    char host[HOST_NAME_MAX + 1] = {};
    if (gethostname(host, sizeof(host)) == 0 && host[0] != '\0') {
        return host;
    }
    return "unknown-host";
}

std::string read_config_file(const std::string& path, std::string_view what) {
    std::ifstream file(path, std::ios::binary);
    if (!file) {
        throw std::invalid_argument(fmt::format("cannot read the {} {}", what, path));
    }
    std::ostringstream text;
    text << file.rdbuf();
    return text.str();
}

}  // namespace conveyor
