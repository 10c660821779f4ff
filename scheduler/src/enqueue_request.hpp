#pragma once

#include <chrono>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/scheduler/catalogue.hpp"

namespace conveyor::scheduler {

/// A job as POST /v1/jobs received it, checked; empty strings stand for absent values (SQL NULL / now()).
struct ApiJob {
    std::string type;
    /// The payload as it is stored: the JSON the caller sent, minified.
    std::string payload = "{}";
    /// RFC 3339 in UTC with milliseconds, within scheduled_jobs::kMaxAhead.
    std::string run_at;
    std::string idempotency_key;
    std::string correlation_id;
    std::string traceparent;
    /// "high", "normal" or "low"; empty is normal.
    std::string priority;
    /// A unique job's key and its window in seconds (as text, for the statement's array); empty for none.
    std::string unique_key;
    std::string unique_for;
    /// The batch the job joins (conveyor.batches); empty for none.
    std::string batch;
};

struct EnqueueRequest {
    std::vector<ApiJob> jobs;
    /// {"jobs": [...]}, answered with {"ids"}; otherwise one job, answered with {"id"}.
    bool listed = false;
};

/// A request the API refuses with 400; the message says what is wrong and where (jobs[3]: …).
class InvalidRequest : public std::invalid_argument {
  public:
    using std::invalid_argument::invalid_argument;
};

/// Reads a POST /v1/jobs body: one job {type, payload, run_at | delay, idempotency_key, correlation_id, traceparent,
/// priority, unique_key, unique_for, batch}
/// or {"jobs": [...]} of up to kMaxJobsPerRequest, each checked against the catalogue; the whole body free of repeated
/// keys and U+0000, each payload within json::kMaxDepth. Throws InvalidRequest.
[[nodiscard]] EnqueueRequest parse_enqueue_request(std::string_view body, const JobCatalogue& catalogue,
                                                   std::chrono::system_clock::time_point now);

/// Jobs in one {"jobs": [...]} request at most.
inline constexpr std::size_t kMaxJobsPerRequest = 1000;

/// An RFC 3339 time with an explicit offset ("2026-12-24T18:00:00Z", "2026-12-24 19:00:00.5+01:00"): a time
/// without one would be read in the database session's time zone. Throws InvalidRequest for another form or a
/// date or time that does not exist.
[[nodiscard]] std::chrono::sys_time<std::chrono::milliseconds> parse_run_at(std::string_view text);

}  // namespace conveyor::scheduler
