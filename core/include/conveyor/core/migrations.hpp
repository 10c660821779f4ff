#pragma once

#include <boost/asio/awaitable.hpp>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "conveyor/core/pg.hpp"

namespace conveyor {

namespace pg {

/// One versioned schema change. Versions order all migrations of a build, whichever library brings them.
struct Migration {
    int version;
    std::string name;
    std::string sql;
};

enum class MigrationStatus { applied, already_applied };

/// Told about each migration as it is applied or found applied.
using MigrationProgress = std::function<void(const Migration&, MigrationStatus)>;

/// Applies the migrations not applied yet, in version order, each in its own transaction together with its row
/// in conveyor.schema_migrations. Concurrent runs (several pods starting) wait for each other on an advisory
/// lock. Throws std::invalid_argument for duplicate versions, std::runtime_error when an applied migration's SQL
/// has changed since (its checksum differs), and pg::Error when a statement fails; the migrations before it stay
/// applied.
boost::asio::awaitable<int> migrate(Pool& pool, std::vector<Migration> migrations, MigrationProgress progress = {});

}  // namespace pg

/// Conveyor's own schema (core/migrations): inbox, outbox, execution records.
[[nodiscard]] std::vector<pg::Migration> core_migrations();

}  // namespace conveyor
