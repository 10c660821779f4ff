#pragma once

#include <fmt/format.h>
#include <simdjson.h>

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/string.hpp>
#include <boost/json/value.hpp>
#include <charconv>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string_view>

#include "conveyor/core/http_server.hpp"
#include "conveyor/core/json.hpp"
#include "conveyor/core/pg.hpp"
#include "enqueue_request.hpp"

/// Request parameters and JSON bodies shared by the API's handlers.
namespace conveyor::scheduler {

/// Rows a listing endpoint returns at most, and by default.
constexpr std::int64_t kMaxListed = 1000;
constexpr std::int64_t kDefaultListed = 100;

/// A whole decimal integer, or nothing (no sign games, no trailing text).
inline std::optional<std::int64_t> parse_integer(std::string_view text) {
    std::int64_t value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc{} || end != text.data() + text.size()) {
        return std::nullopt;
    }
    return value;
}

/// A listing's ?limit=, kDefaultListed without one; throws std::invalid_argument unless it is 1 to kMaxListed.
inline std::int64_t listing_limit(const HttpRequest& request) {
    const auto text = request.query_param("limit");
    if (!text) {
        return kDefaultListed;
    }
    const auto limit = parse_integer(*text);
    if (!limit || *limit < 1 || *limit > kMaxListed) {
        throw std::invalid_argument(fmt::format("limit must be from 1 to {}", kMaxListed));
    }
    return *limit;
}

inline HttpResponse json_response(unsigned status, const boost::json::value& body) {
    return HttpResponse{status, "application/json", boost::json::serialize(body) + "\n"};
}

inline HttpResponse error_response(unsigned status, std::string_view message) {
    return json_response(status, boost::json::object{{"error", message}});
}

/// A POST body: a JSON object whose fields are all in `allowed`. Throws InvalidRequest saying what is wrong.
inline simdjson::dom::object read_body(simdjson::dom::parser& parser, const std::string& body,
                                       std::initializer_list<std::string_view> allowed) {
    simdjson::dom::element root;
    simdjson::dom::object object;
    if (const auto error = parser.parse(body).get(root)) {
        throw InvalidRequest(fmt::format("the body must be a JSON object: {}", simdjson::error_message(error)));
    }
    if (auto violation = json::check(root, {.allow_nul = false})) {
        throw InvalidRequest(violation->message);
    }
    if (root.get(object) != simdjson::SUCCESS) {
        throw InvalidRequest("the body must be a JSON object");
    }
    for (const auto field : object) {
        if (std::find(allowed.begin(), allowed.end(), field.key) == allowed.end()) {
            throw InvalidRequest(fmt::format("unknown field '{}'", field.key));
        }
    }
    return object;
}

/// Stored JSON (a payload, a dead letter's headers) to render: as JSON when it is within json::kMaxDepth, as the
/// text it is otherwise (a row written before that limit, headers a publisher nested deeper): a listing never
/// fails on one row.
inline boost::json::value stored_json(std::string_view text) {
    if (auto value = json::parse_stored(text)) {
        return std::move(*value);
    }
    return boost::json::string(text);
}

inline boost::json::value json_or_null(const pg::Result& rows, int row, int column) {
    if (rows.is_null(row, column)) {
        return nullptr;
    }
    return boost::json::string(rows.text(row, column));
}

}  // namespace conveyor::scheduler
