#include "enqueue_request.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <charconv>
#include <limits>
#include <regex>

#include "conveyor/admin/scheduled_jobs.hpp"
#include "conveyor/core/config.hpp"
#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/json.hpp"
#include "conveyor/core/topology.hpp"
#include "conveyor/core/trace.hpp"

namespace conveyor::scheduler {

namespace {

using std::chrono::system_clock;
using Millis = std::chrono::milliseconds;

constexpr std::size_t kMaxIdentifierBytes = 255;
constexpr std::string_view kKnownFields =
    "type, payload, run_at, delay, idempotency_key, correlation_id, traceparent, priority, unique_key, unique_for, "
    "batch";

// Groups: 1 year, 2 month, 3 day, 4 hour, 5 minute, 6 second, 7 fraction, 8 zone, 9 sign, 10 and 11 the offset.
const std::regex kTimestamp(
    R"((\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?([Zz]|([+-])(\d{2})(?::?(\d{2}))?))");

int number(const std::csub_match& group) {
    int value = 0;
    if (group.matched) {
        std::from_chars(group.first, group.second, value);
    }
    return value;
}

std::string bounded_string(simdjson::dom::element value, std::string_view field, std::size_t limit) {
    std::string_view text;
    if (value.get(text) != simdjson::SUCCESS) {
        throw InvalidRequest(fmt::format("{} must be a string", field));
    }
    if (text.empty() || text.size() > limit) {
        throw InvalidRequest(fmt::format("{} must be 1 to {} bytes", field, limit));
    }
    return std::string(text);
}

constexpr std::string_view kTenYears = "10 years";

std::string checked_run_at(std::chrono::sys_time<Millis> at, system_clock::time_point now) {
    // Compared in milliseconds: system_clock's nanoseconds end in 2262, and a run_at of 9999 would wrap around.
    if (at > std::chrono::floor<Millis>(now) + scheduled_jobs::kMaxAhead) {
        throw InvalidRequest(fmt::format("run_at is more than {} ahead", kTenYears));
    }
    return utc_timestamp(at);
}

Millis read_delay(simdjson::dom::element value) {
    double seconds = 0;
    std::string_view text;
    Millis delay{};
    if (value.get(seconds) == simdjson::SUCCESS) {
        if (!(seconds >= 0) || seconds > std::chrono::duration<double>(scheduled_jobs::kMaxAhead).count()) {
            throw InvalidRequest(fmt::format("delay must be from 0 seconds to {}", kTenYears));
        }
        delay = Millis(static_cast<std::int64_t>(seconds * 1000));
    } else if (value.get(text) == simdjson::SUCCESS) {
        try {
            delay = parse_duration(text);
        } catch (const std::invalid_argument& e) {
            throw InvalidRequest(fmt::format("delay: {}", e.what()));
        }
    } else {
        throw InvalidRequest("delay must be seconds (a number) or a duration such as \"90s\"");
    }
    if (delay > scheduled_jobs::kMaxAhead) {
        throw InvalidRequest(fmt::format("delay must be from 0 seconds to {}", kTenYears));
    }
    return delay;
}

/// One field of a job object into `job`; whether it was the delay.
bool read_field(std::string_view key, simdjson::dom::element value, ApiJob& job, system_clock::time_point now) {
    if (key == "type") {
        job.type = bounded_string(value, "type", kMaxIdentifierBytes);
    } else if (key == "payload") {
        if (!value.is_object()) {
            throw InvalidRequest("payload must be a JSON object");
        }
        job.payload = simdjson::minify(value);
    } else if (key == "run_at") {
        job.run_at = checked_run_at(parse_run_at(bounded_string(value, "run_at", 64)), now);
    } else if (key == "delay") {
        job.run_at = utc_timestamp(now + read_delay(value));
        return true;
    } else if (key == "idempotency_key") {
        job.idempotency_key = bounded_string(value, "idempotency_key", kMaxIdentifierBytes);
    } else if (key == "correlation_id") {
        job.correlation_id = bounded_string(value, "correlation_id", kMaxIdentifierBytes);
    } else if (key == "traceparent") {
        job.traceparent = bounded_string(value, "traceparent", 55);
        if (!Traceparent::parse(job.traceparent)) {
            throw InvalidRequest("traceparent must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)");
        }
    } else if (key == "priority") {
        std::string_view priority;
        if (value.get(priority) != simdjson::SUCCESS || !topology::parse_band(priority)) {
            throw InvalidRequest(R"(priority must be "high", "normal" or "low")");
        }
        job.priority = std::string(priority);
    } else if (key == "unique_key") {
        job.unique_key = bounded_string(value, "unique_key", job_headers::kMaxUniqueKeyBytes);
    } else if (key == "unique_for") {
        std::int64_t seconds = -1;
        if (value.get(seconds) != simdjson::SUCCESS || seconds < 0 || seconds > job_headers::kMaxUniqueForSeconds) {
            throw InvalidRequest(
                fmt::format("unique_for must be whole seconds from 0 to {}", job_headers::kMaxUniqueForSeconds));
        }
        job.unique_for = std::to_string(seconds);
    } else if (key == "batch") {
        std::string_view batch;
        if (value.get(batch) != simdjson::SUCCESS || !job_headers::is_batch_id(batch)) {
            throw InvalidRequest(fmt::format("batch must be the id of an open batch: 1 to {} bytes of text",
                                             job_headers::kMaxBatchIdBytes));
        }
        job.batch = std::string(batch);
    } else {
        throw InvalidRequest(fmt::format("unknown field '{}' (known: {})", key.substr(0, 64), kKnownFields));
    }
    return false;
}

ApiJob read_job(simdjson::dom::element element, const JobCatalogue& catalogue, system_clock::time_point now) {
    simdjson::dom::object object;
    if (element.get(object) != simdjson::SUCCESS) {
        throw InvalidRequest("a job must be a JSON object");
    }
    ApiJob job;
    bool delayed = false;
    bool timed = false;
    for (const auto field : object) {
        const bool delay = read_field(field.key, field.value, job, now);
        delayed = delayed || delay;
        timed = timed || field.key == "run_at";
    }
    if (job.type.empty()) {
        throw InvalidRequest("type is required");
    }
    if (!job.unique_for.empty() && job.unique_key.empty()) {
        throw InvalidRequest("unique_for needs a unique_key");
    }
    if (delayed && timed) {
        throw InvalidRequest("give run_at or delay, not both");
    }
    if (auto refusal = check_job(catalogue, job.type, job.payload)) {
        throw InvalidRequest(*refusal);
    }
    return job;
}

}  // namespace

std::chrono::sys_time<Millis> parse_run_at(std::string_view text) {
    std::cmatch parts;
    if (!std::regex_match(text.begin(), text.end(), parts, kTimestamp)) {
        throw InvalidRequest(fmt::format(
            "run_at '{}' is not an RFC 3339 time with an offset, e.g. 2026-12-24T18:00:00Z", text.substr(0, 64)));
    }
    const std::chrono::year_month_day date{std::chrono::year(number(parts[1])),
                                           std::chrono::month(static_cast<unsigned>(number(parts[2]))),
                                           std::chrono::day(static_cast<unsigned>(number(parts[3])))};
    const int offset_sign = parts[9].matched && *parts[9].first == '-' ? -1 : 1;
    if (!date.ok() || date.year() < std::chrono::year(1970) || number(parts[4]) > 23 || number(parts[5]) > 59 ||
        number(parts[6]) > 59 || number(parts[10]) > 23 || number(parts[11]) > 59) {
        throw InvalidRequest(fmt::format("run_at '{}' is not a valid date and time from 1970 on", text));
    }
    std::string millis = parts[7].matched ? std::string(parts[7].first + 1, parts[7].second) : "";
    millis.resize(3, '0');
    const auto offset = std::chrono::hours(number(parts[10])) + std::chrono::minutes(number(parts[11]));
    return std::chrono::sys_days(date) + std::chrono::hours(number(parts[4])) + std::chrono::minutes(number(parts[5])) +
           std::chrono::seconds(number(parts[6])) + Millis(std::stoi(millis)) - offset_sign * offset;
}

EnqueueRequest parse_enqueue_request(std::string_view body, const JobCatalogue& catalogue,
                                     system_clock::time_point now) {
    simdjson::dom::parser parser;
    simdjson::dom::element root;
    if (const auto error = parser.parse(body.data(), body.size()).get(root)) {
        throw InvalidRequest(fmt::format("the body is not valid JSON: {}", simdjson::error_message(error)));
    }
    if (auto violation =
            json::check(root, {.max_depth = std::numeric_limits<std::size_t>::max(), .allow_nul = false})) {
        throw InvalidRequest(violation->message);
    }
    EnqueueRequest request;
    simdjson::dom::array listed;
    request.listed = root.is_object() && root["jobs"].error() == simdjson::SUCCESS;
    if (!request.listed) {
        request.jobs.push_back(read_job(root, catalogue, now));
        return request;
    }
    if (root["jobs"].get(listed) != simdjson::SUCCESS || listed.size() == 0 || listed.size() > kMaxJobsPerRequest) {
        throw InvalidRequest(fmt::format("jobs must be an array of 1 to {} jobs", kMaxJobsPerRequest));
    }
    if (root.get_object().value_unsafe().size() != 1) {
        throw InvalidRequest(R"(a list of jobs is {"jobs": [...]} with no other field)");
    }
    std::size_t index = 0;
    for (const auto element : listed) {
        try {
            request.jobs.push_back(read_job(element, catalogue, now));
        } catch (const InvalidRequest& e) {
            throw InvalidRequest(fmt::format("jobs[{}]: {}", index, e.what()));
        }
        ++index;
    }
    return request;
}

}  // namespace conveyor::scheduler
