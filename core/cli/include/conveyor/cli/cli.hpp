#pragma once

#include <iosfwd>
#include <span>
#include <vector>

#include "conveyor/core/migrations.hpp"

namespace conveyor::cli {

/// Exit codes of the conveyor CLI (documented in the README).
enum ExitCode : int {
    kOk = 0,
    kFailed = 1,         ///< the operation ran but some of it failed (e.g. a publish was nacked)
    kUsage = 2,          ///< bad flags or arguments
    kUnavailable = 3,    ///< the broker or the database could not be reached
    kInterrupted = 130,  ///< SIGINT/SIGTERM stopped it between two steps; what is done stays done
};

/// Runs the operator CLI (`conveyor enqueue|topology|queues|migrate …`) with the given argv. `migrations` is the
/// schema `conveyor migrate` applies: the main composes Conveyor's own with the job families'.
[[nodiscard]] int run(std::span<const char* const> argv, std::vector<pg::Migration> migrations);

}  // namespace conveyor::cli
