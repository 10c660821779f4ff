#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace conveyor {

/// A route() pattern, segment by segment: a literal segment has an empty name, a {name} one an empty literal.
struct RoutePattern {
    std::vector<std::string> literals;
    std::vector<std::string> names;

    static RoutePattern parse(std::string_view pattern) {
        if (!pattern.starts_with('/')) {
            throw std::invalid_argument(fmt::format("HTTP route pattern '{}' does not start with '/'", pattern));
        }
        RoutePattern parsed;
        // Boost.URL sees no segments in "/", and an empty last one after a trailing '/'; so does this.
        if (pattern == "/") {
            return parsed;
        }
        std::string_view rest = pattern.substr(1);
        while (true) {
            const auto slash = rest.find('/');
            const auto segment = rest.substr(0, slash);
            if (segment.size() >= 2 && segment.starts_with('{') && segment.ends_with('}')) {
                parsed.literals.emplace_back();
                parsed.names.emplace_back(segment.substr(1, segment.size() - 2));
            } else {
                parsed.literals.emplace_back(segment);
                parsed.names.emplace_back();
            }
            if (slash == std::string_view::npos) {
                return parsed;
            }
            rest.remove_prefix(slash + 1);
        }
    }

    [[nodiscard]] bool matches(const std::vector<std::string>& segments) const {
        if (segments.size() != literals.size()) {
            return false;
        }
        for (std::size_t i = 0; i < segments.size(); ++i) {
            if (names[i].empty() ? segments[i] != literals[i] : segments[i].empty()) {
                return false;
            }
        }
        return true;
    }

    /// Where two patterns match the same path, the one with a literal segment first where they differ wins.
    [[nodiscard]] bool more_specific_than(const RoutePattern& other) const {
        for (std::size_t i = 0; i < names.size(); ++i) {
            if (names[i].empty() != other.names[i].empty()) {
                return names[i].empty();
            }
        }
        return false;
    }

    /// Whether both match exactly the same paths.
    [[nodiscard]] bool same_shape(const RoutePattern& other) const {
        if (literals.size() != other.literals.size()) {
            return false;
        }
        for (std::size_t i = 0; i < literals.size(); ++i) {
            if (names[i].empty() != other.names[i].empty() || literals[i] != other.literals[i]) {
                return false;
            }
        }
        return true;
    }
};

}  // namespace conveyor
