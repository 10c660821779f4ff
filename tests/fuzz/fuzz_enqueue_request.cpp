// POST /v1/jobs bodies through parse_enqueue_request(), and the same bytes through parse_run_at().
//
// InvalidRequest is the one way either may refuse input; any other exception escaping is a bug and ends the run
// (libFuzzer reports it as a deadly signal). Every job it accepts must be one the rest of the pipeline reads the
// same way: a type, and a payload that re-parses as a JSON object PostgreSQL's jsonb can store (json::check
// without U+0000).

#include <simdjson.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "conveyor/core/json.hpp"
#include "conveyor/jobs/jobs.hpp"
#include "enqueue_request.hpp"

namespace {

namespace scheduler = conveyor::scheduler;

[[noreturn]] void violated(const char* what, std::string_view detail) {
    std::fprintf(stderr, "fuzz_enqueue_request: invariant violated: %s: %.*s\n", what, static_cast<int>(detail.size()),
                 detail.data());
    std::abort();
}

/// The catalogue conveyor-scheduler's main builds.
const scheduler::JobCatalogue& catalogue() {
    static const auto validators = conveyor::jobs::payload_validators();
    return validators;
}

/// A fixed "now", so that a crashing input reproduces: 2026-12-01T00:00:00Z.
std::chrono::system_clock::time_point now() {
    using namespace std::chrono;
    return sys_days(year(2026) / December / 1);
}

void check_job(const scheduler::ApiJob& job) {
    if (job.type.empty()) {
        violated("accepted job without a type", job.payload);
    }
    simdjson::dom::parser parser;
    simdjson::dom::element payload;
    if (const auto error = parser.parse(job.payload).get(payload)) {
        violated("accepted payload does not re-parse", job.payload);
    }
    if (!payload.is_object()) {
        violated("accepted payload is not an object", job.payload);
    }
    if (const auto violation = conveyor::json::check(payload, {.allow_nul = false})) {
        violated("accepted payload fails json::check", violation->message);
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
    spdlog::set_level(spdlog::level::off);
    (void)catalogue();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view body(reinterpret_cast<const char*>(data), size);
    try {
        const auto request = scheduler::parse_enqueue_request(body, catalogue(), now());
        if (request.jobs.empty()) {
            violated("accepted request without jobs", body);
        }
        if (!request.listed && request.jobs.size() != 1) {
            violated("a single-job request gave several jobs", body);
        }
        for (const auto& job : request.jobs) {
            check_job(job);
        }
    } catch (const scheduler::InvalidRequest&) {
    }
    try {
        (void)scheduler::parse_run_at(body);
    } catch (const scheduler::InvalidRequest&) {
    }
    return 0;
}
