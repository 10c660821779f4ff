#pragma once

#include <iosfwd>
#include <span>

namespace conveyor::cli {

/// Exit codes of the conveyor CLI (documented in the README).
enum ExitCode : int {
    kOk = 0,
    kFailed = 1,       ///< the operation ran but some of it failed (e.g. a publish was nacked)
    kUsage = 2,        ///< bad flags or arguments
    kUnavailable = 3,  ///< the broker could not be reached
};

/// Runs the operator CLI (`conveyor enqueue|topology|queues …`) with the given argv.
[[nodiscard]] int run(std::span<const char* const> argv);

}  // namespace conveyor::cli
