#include "conveyor/cli/cli.hpp"
#include "conveyor/jobs/commands.hpp"
#include "conveyor/jobs/jobs.hpp"

int main(int argc, char** argv) {
    auto migrations = conveyor::core_migrations();
    auto job_migrations = conveyor::jobs::migrations();
    migrations.insert(migrations.end(), job_migrations.begin(), job_migrations.end());
    return conveyor::cli::run({argv, static_cast<std::size_t>(argc)}, std::move(migrations),
                              conveyor::jobs::cli_commands());
}
