#pragma once

#include <boost/asio/awaitable.hpp>
#include <functional>
#include <iosfwd>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/migrations.hpp"
#include "conveyor/core/pg.hpp"

namespace CLI {
class App;
}

namespace conveyor::cli {

/// Exit codes of the conveyor CLI (documented in the README).
enum ExitCode : int {
    kOk = 0,
    kFailed = 1,         ///< the operation ran but some of it failed (e.g. a publish was nacked)
    kUsage = 2,          ///< bad flags or arguments
    kUnavailable = 3,    ///< the broker or the database could not be reached
    kInterrupted = 130,  ///< SIGINT/SIGTERM stopped it between two steps; what is done stays done
};

/// A command a binary adds beside Conveyor's own (the job families' `conveyor orders …`): `add` declares it, with
/// its options, on the application and returns it; once the command line is parsed, `run` is called if that
/// command was chosen, and returns the exit code.
struct Command {
    std::function<CLI::App*(CLI::App& app)> add;
    std::function<int()> run;
};

/// Runs the operator CLI (`conveyor enqueue|topology|queues|migrate …`) with the given argv. `migrations` is the
/// schema `conveyor migrate` applies and `commands` the commands added to Conveyor's: the main composes Conveyor's
/// own with the job families'.
[[nodiscard]] int run(std::span<const char* const> argv, std::vector<pg::Migration> migrations,
                      const std::vector<Command>& commands = {});

using DatabaseBody = std::function<boost::asio::awaitable<int>(pg::Pool&)>;

/// Runs `body` against the database on a pool of one connection, for `conveyor <command>`; a database error is
/// printed and becomes the exit code (3 unreachable, 2 bad input, 1 otherwise).
int with_database(const std::string& pg_url, std::string_view command, const DatabaseBody& body);

}  // namespace conveyor::cli
