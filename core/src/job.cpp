#include "conveyor/core/job.hpp"

#include <algorithm>
#include <stdexcept>

namespace conveyor {

std::chrono::milliseconds RetryPolicy::ceiling(std::uint32_t failed_attempt) const noexcept {
    // Doubling stops once it passes the cap, so a large attempt number cannot overflow.
    auto delay = base_delay;
    for (std::uint32_t n = 1; n < failed_attempt && delay < max_delay; ++n) {
        delay *= 2;
    }
    return std::min(delay, max_delay);
}

std::chrono::milliseconds RetryPolicy::delay_after(std::uint32_t failed_attempt, std::chrono::milliseconds requested,
                                                   double unit_random) const noexcept {
    const auto jittered = std::chrono::milliseconds(static_cast<std::int64_t>(
        static_cast<double>(ceiling(failed_attempt).count()) * std::clamp(unit_random, 0.0, 1.0)));
    return std::max(jittered, requested);
}

void JobRegistry::add(std::string type, JobHandler handler, JobOptions options) {
    if (!is_valid_job_type(type)) {
        throw std::invalid_argument(fmt::format("invalid job type '{}': expected <family>.<action>", type));
    }
    if (!handler) {
        throw std::invalid_argument(fmt::format("job type '{}' has no handler", type));
    }
    if (definitions_.contains(type)) {
        throw std::invalid_argument(fmt::format("job type '{}' is registered twice", type));
    }
    auto key = type;
    definitions_.emplace(std::move(key), JobDefinition{std::move(type), std::move(handler), options});
}

const JobDefinition* JobRegistry::find(std::string_view type) const noexcept {
    const auto it = definitions_.find(type);
    return it == definitions_.end() ? nullptr : &it->second;
}

std::vector<std::string> JobRegistry::types() const {
    std::vector<std::string> names;
    names.reserve(definitions_.size());
    for (const auto& [name, definition] : definitions_) {
        names.push_back(name);
    }
    return names;
}

std::vector<std::string> JobRegistry::types_of_family(std::string_view family) const {
    std::vector<std::string> names;
    for (const auto& [name, definition] : definitions_) {
        if (name.size() > family.size() && name.starts_with(family) && name[family.size()] == '.') {
            names.push_back(name);
        }
    }
    return names;
}

}  // namespace conveyor
