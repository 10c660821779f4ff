#pragma once

#include "conveyor/core/job.hpp"

namespace conveyor::jobs {

/// diag.noop, diag.sleep and diag.fail: jobs for operators, tests and benchmarks.
void register_diag_jobs(JobRegistry& registry);

/// Every job family this build knows.
void register_all(JobRegistry& registry);

}  // namespace conveyor::jobs
