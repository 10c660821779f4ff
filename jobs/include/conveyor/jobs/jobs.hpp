#pragma once

#include "conveyor/core/job.hpp"
#include "conveyor/core/migrations.hpp"

namespace conveyor::jobs {

/// diag.noop, diag.sleep and diag.fail: jobs for operators, tests and benchmarks.
void register_diag_jobs(JobRegistry& registry);

/// Every job family this build knows.
void register_all(JobRegistry& registry);

/// The schema the job families need (jobs/migrations), applied by `conveyor migrate` after Conveyor's own.
[[nodiscard]] std::vector<pg::Migration> migrations();

}  // namespace conveyor::jobs
