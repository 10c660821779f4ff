#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "conveyor/core/config.hpp"

/// Command-line helpers shared by the binaries (each links CLI11 itself).
namespace conveyor {

/// A CLI11 validator that accepts what parse_duration accepts ("250ms", "30s", "14d").
inline CLI::Validator duration_validator() {
    return {[](std::string& value) -> std::string {
                try {
                    (void)parse_duration(value);
                    return {};
                } catch (const std::invalid_argument& e) {
                    return e.what();
                }
            },
            "DURATION"};
}

}  // namespace conveyor
