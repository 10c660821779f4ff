#include <fmt/format.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <iostream>

#include "commands.hpp"
#include "conveyor/cli/cli.hpp"
#include "conveyor/core/redaction.hpp"

namespace conveyor::cli {
namespace asio = boost::asio;

int migrate(const MigrateOptions& options, std::vector<pg::Migration> migrations) {
    asio::io_context io;
    auto settings = cli_database_settings(options.pg_url, "migrate");
    settings.statement_timeout = options.statement_timeout;
    pg::Pool pool(io.get_executor(), settings);
    const auto total = migrations.size();
    int exit_code = kOk;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            try {
                const int applied = co_await pg::migrate(
                    pool, std::move(migrations), [](const pg::Migration& migration, pg::MigrationStatus status) {
                        std::cout << fmt::format("{:<8} {:04} {}\n",
                                                 status == pg::MigrationStatus::applied ? "applied" : "current",
                                                 migration.version, migration.name)
                                  << std::flush;
                    });
                std::cout << fmt::format("{} of {} migrations applied now, {} were already applied\n", applied, total,
                                         total - static_cast<std::size_t>(applied));
            } catch (const pg::Error& e) {
                std::cerr << fmt::format("conveyor migrate: {} ({})\n", e.what(), redacted_url(options.pg_url));
                exit_code = e.sqlstate().starts_with("08") ? kUnavailable : kFailed;
            } catch (const std::invalid_argument& e) {
                std::cerr << fmt::format("conveyor migrate: {}\n", e.what());
                exit_code = kUsage;
            } catch (const std::exception& e) {
                std::cerr << fmt::format("conveyor migrate: {}\n", e.what());
                exit_code = kFailed;
            }
        },
        asio::detached);
    io.run();
    return exit_code;
}

}  // namespace conveyor::cli
