#include "conveyor/core/migrations.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace conveyor::pg {

namespace {

/// Taken by every `conveyor migrate`, so concurrent runs apply each migration once, in order.
constexpr std::int64_t kMigrationLock = 0x636f6e7665796f72;  // "conveyor"

constexpr std::string_view kBootstrap = R"(
CREATE SCHEMA IF NOT EXISTS conveyor;
CREATE TABLE IF NOT EXISTS conveyor.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
)";

/// FNV-1a: enough to notice an edited migration; not a security measure.
std::string checksum(std::string_view sql) {
    std::uint64_t hash = 0xcbf29ce484222325ULL;
    for (const char c : sql) {
        hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
    }
    return fmt::format("{:016x}", hash);
}

}  // namespace

boost::asio::awaitable<int> migrate(Pool& pool, std::vector<Migration> migrations, MigrationProgress progress) {
    std::sort(migrations.begin(), migrations.end(), [](const auto& a, const auto& b) { return a.version < b.version; });
    for (std::size_t i = 1; i < migrations.size(); ++i) {
        if (migrations[i].version == migrations[i - 1].version) {
            throw std::invalid_argument(fmt::format("two migrations have version {}: {} and {}", migrations[i].version,
                                                    migrations[i - 1].name, migrations[i].name));
        }
    }
    {
        auto bootstrap = co_await pool.begin();
        co_await bootstrap.query("SELECT pg_advisory_xact_lock($1)", kMigrationLock);
        std::string bootstrap_sql(kBootstrap);
        co_await bootstrap.run_script(std::move(bootstrap_sql));
        co_await bootstrap.commit();
    }
    int applied = 0;
    for (const auto& migration : migrations) {
        auto transaction = co_await pool.begin();
        co_await transaction.query("SELECT pg_advisory_xact_lock($1)", kMigrationLock);
        const auto sum = checksum(migration.sql);
        const auto existing = co_await transaction.query(
            "SELECT checksum FROM conveyor.schema_migrations WHERE version = $1", migration.version);
        if (existing.rows() == 1) {
            if (existing.text(0, 0) != sum) {
                throw std::runtime_error(fmt::format(
                    "migration {:04} ({}) has changed since it was applied; add a new migration instead of editing "
                    "an applied one",
                    migration.version, migration.name));
            }
            co_await transaction.rollback();
            if (progress) {
                progress(migration, MigrationStatus::already_applied);
            }
            continue;
        }
        co_await transaction.run_script(migration.sql);
        co_await transaction.query(
            "INSERT INTO conveyor.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", migration.version,
            migration.name, sum);
        co_await transaction.commit();
        ++applied;
        if (progress) {
            progress(migration, MigrationStatus::applied);
        }
    }
    co_return applied;
}

}  // namespace conveyor::pg
