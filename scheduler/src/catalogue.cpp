#include "conveyor/scheduler/catalogue.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include "conveyor/core/envelope.hpp"
#include "conveyor/core/json.hpp"

namespace conveyor::scheduler {

std::optional<std::string> check_job(const JobCatalogue& catalogue, std::string_view type,
                                     std::string_view payload_json) {
    if (!is_valid_job_type(type)) {
        return fmt::format("'{}' is not a job type; expected <family>.<action>", type);
    }
    const auto found = catalogue.find(type);
    if (found == catalogue.end()) {
        return fmt::format("unknown job type '{}'", type);
    }
    // A parser per call: checks run on several threads, and a payload is small next to the parser's set-up.
    simdjson::dom::parser parser;
    simdjson::dom::element payload;
    if (const auto error = parser.parse(payload_json.data(), payload_json.size()).get(payload)) {
        return fmt::format("payload is not valid JSON: {}", simdjson::error_message(error));
    }
    if (!payload.is_object()) {
        return std::string("payload must be a JSON object");
    }
    // What is stored must be what was checked, and fit every reader: PostgreSQL's jsonb keeps the last of repeated
    // keys and cannot hold U+0000.
    if (auto violation = json::check(payload, {.allow_nul = false})) {
        return fmt::format("payload: {}", violation->message);
    }
    if (found->second) {
        if (auto refusal = found->second(payload)) {
            return fmt::format("invalid payload for {}: {}", type, *refusal);
        }
    }
    return std::nullopt;
}

}  // namespace conveyor::scheduler
