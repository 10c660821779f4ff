#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "conveyor/core/job.hpp"

namespace conveyor::scheduler {

/// The job types an enqueue may name, each with the payload validator the worker runs. Checking a job here, when it
/// is enqueued, tells the caller at once what the worker would otherwise dead-letter as unknown_type or
/// invalid_payload.
using JobCatalogue = std::map<std::string, PayloadValidator, std::less<>>;

/// Why a job of `type` with this JSON payload would be refused (unknown type, not a JSON object, invalid payload), or
/// nullopt if it is fine.
[[nodiscard]] std::optional<std::string> check_job(const JobCatalogue& catalogue, std::string_view type,
                                                   std::string_view payload_json);

}  // namespace conveyor::scheduler
