#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include "worker_fixture.hpp"

namespace conveyor::testing {

/// Worker processes under flow limits: every test starts and ends with no limit applied and no job in a line.
class FlowLimitsTest : public WorkerTest {
  protected:
    void SetUp() override {
        WorkerTest::SetUp();
        clear_limits();
    }
    void TearDown() override { clear_limits(); }

    void clear_limits() {
        database_.query(
            "TRUNCATE conveyor.flow_config, conveyor.concurrency_slots, conveyor.concurrency_waiting, "
            "conveyor.rate_buckets, conveyor.rate_waiting, conveyor.rate_passes RESTART IDENTITY");
    }

    /// Applies a flow file through the CLI; returns its output.
    std::string apply_flow(const std::string& yaml) {
        const auto path = std::filesystem::temp_directory_path() / "conveyor-flow-test.yaml";
        std::ofstream(path) << yaml;
        return run_cli({"flow", "apply", path.string(), "--pg-url", pg_url()});
    }

    /// Jobs that succeeded on any of `workers`, by their metrics.
    static double succeeded(const std::vector<WorkerUnderTest>& workers) {
        double total = 0;
        for (const auto& worker : workers) {
            total += worker.metric("conveyor_jobs_completed_total", {"outcome=\"success\""});
        }
        return total;
    }
};

}  // namespace conveyor::testing
