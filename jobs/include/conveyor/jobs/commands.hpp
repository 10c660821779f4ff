#pragma once

#include <vector>

#include "conveyor/cli/cli.hpp"

namespace conveyor::jobs {

/// The job families' commands for the operator CLI: `conveyor orders history ORDER_ID [--json]`, an order's audit
/// trail (its status and every event of it, in order).
[[nodiscard]] std::vector<cli::Command> cli_commands();

}  // namespace conveyor::jobs
