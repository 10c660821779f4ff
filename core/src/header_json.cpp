#include "conveyor/core/header_json.hpp"

#include <simdjson.h>

#include <array>
#include <boost/json/serialize.hpp>
#include <cmath>
#include <utility>

#include "conveyor/core/utf8.hpp"

namespace conveyor::amqp {
namespace {

Headers headers_of(simdjson::dom::object object) {
    Headers headers;
    for (const auto field : object) {
        const std::string name(field.key);
        if (field.value.is_string()) {
            set_header(headers, name, std::string(field.value.get_string().value_unsafe()));
        } else if (field.value.is_int64()) {
            set_header(headers, name, field.value.get_int64().value_unsafe());
        } else if (field.value.is_bool()) {
            set_header(headers, name, field.value.get_bool().value_unsafe());
        } else if (field.value.is_double()) {
            set_header(headers, name, field.value.get_double().value_unsafe());
        }
    }
    return headers;
}

/// The text properties, by their names in the JSON.
std::array<std::pair<std::string_view, std::string Properties::*>, 7> text_properties() {
    return {{{"content_type", &Properties::content_type},
             {"content_encoding", &Properties::content_encoding},
             {"message_id", &Properties::message_id},
             {"correlation_id", &Properties::correlation_id},
             {"type", &Properties::type},
             {"expiration", &Properties::expiration},
             {"app_id", &Properties::app_id}}};
}

}  // namespace

boost::json::object headers_to_json(const Headers& headers) {
    boost::json::object object;
    for (const auto& header : headers) {
        const auto name = utf8::postgres_text(header.first);
        std::visit(
            [&object, &name](const auto& value) {
                using T = std::decay_t<decltype(value)>;
                if constexpr (std::is_same_v<T, std::string>) {
                    object[name] = utf8::postgres_text(value);
                } else if constexpr (std::is_same_v<T, double>) {
                    object[name] = std::isfinite(value) ? boost::json::value(value) : boost::json::value(nullptr);
                } else {
                    object[name] = value;
                }
            },
            header.second);
    }
    return object;
}

Headers headers_from_json(std::string_view json) {
    simdjson::dom::parser parser;
    simdjson::dom::object object;
    if (parser.parse(json.data(), json.size()).get(object) != simdjson::SUCCESS) {
        return {};
    }
    return headers_of(object);
}

boost::json::object properties_to_json(const Properties& properties) {
    boost::json::object object;
    for (const auto& [name, field] : text_properties()) {
        if (!(properties.*field).empty()) {
            object[name] = utf8::postgres_text(properties.*field);
        }
    }
    if (properties.timestamp) {
        object["timestamp"] = *properties.timestamp;
    }
    object["delivery_mode"] = properties.delivery_mode;
    object["headers"] = headers_to_json(properties.headers);
    return object;
}

Properties properties_from_json(std::string_view json) {
    Properties properties;
    simdjson::dom::parser parser;
    simdjson::dom::object object;
    if (parser.parse(json.data(), json.size()).get(object) != simdjson::SUCCESS) {
        return properties;
    }
    for (const auto& [name, field] : text_properties()) {
        std::string_view text;
        if (object[name].get(text) == simdjson::SUCCESS) {
            properties.*field = std::string(text);
        }
    }
    std::uint64_t number = 0;
    if (object["timestamp"].get(number) == simdjson::SUCCESS) {
        properties.timestamp = number;
    }
    if (object["delivery_mode"].get(number) == simdjson::SUCCESS && number <= 2) {
        properties.delivery_mode = static_cast<std::uint8_t>(number);
    }
    simdjson::dom::object headers;
    if (object["headers"].get(headers) == simdjson::SUCCESS) {
        properties.headers = headers_of(headers);
    }
    return properties;
}

}  // namespace conveyor::amqp
