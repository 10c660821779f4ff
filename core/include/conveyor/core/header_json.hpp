#pragma once

#include <boost/json/object.hpp>
#include <string_view>

#include "conveyor/core/amqp.hpp"

/// A message's headers and properties as JSON, to keep a message in PostgreSQL (dead letters, jobs waiting for a
/// concurrency limit) and publish it again. Text becomes well-formed UTF-8 without NUL (what jsonb holds); numbers
/// that JSON cannot hold (NaN, infinities) become null and are dropped on the way back.
namespace conveyor::amqp {

/// A flat object: each header's name and its string, integer, boolean or number.
[[nodiscard]] boost::json::object headers_to_json(const Headers& headers);
/// The headers of a flat object as headers_to_json() writes it; other fields are skipped, and text that is not a
/// JSON object gives none.
[[nodiscard]] Headers headers_from_json(std::string_view json);

/// The properties a job's message carries (ids, content type, timestamp, headers) as one object.
[[nodiscard]] boost::json::object properties_to_json(const Properties& properties);
/// Back from properties_to_json()'s text; fields it does not know are skipped.
[[nodiscard]] Properties properties_from_json(std::string_view json);

}  // namespace conveyor::amqp
