// AMQP messages through parse_envelope(), as a worker receives them from the broker.
//
// The input is the message's fields separated by 0xFF bytes (a byte that valid UTF-8, and so any sensible
// routing key, id or JSON body, never holds), in this order:
//
//   routing key | message_id | content_type | x-conveyor-attempt | x-conveyor-enqueued-at | traceparent |
//   timestamp | correlation_id | body (the rest, 0xFF included)
//
// A missing field is empty, and an empty header or timestamp is absent. A header's text is sent as the AMQP type
// it reads as: a whole decimal number as an integer, "true"/"false" as a boolean, another number as a double,
// anything else as a string; so each header meets every type the field-table decoder can produce.
//
// Each message is parsed twice, with its body unpadded and with simdjson's padding after it (the AMQP layer's
// zero-copy path); both must agree. An accepted message must have a valid type, an id within limits, an attempt of
// at least 1, and an object payload that json::check accepts.

#include <simdjson.h>
#include <spdlog/spdlog.h>

#include <array>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "conveyor/core/envelope.hpp"
#include "conveyor/core/json.hpp"

namespace {

namespace amqp = conveyor::amqp;

[[noreturn]] void violated(const char* what, std::string_view detail = {}) {
    std::fprintf(stderr, "fuzz_envelope: invariant violated: %s %.*s\n", what, static_cast<int>(detail.size()),
                 detail.data());
    std::abort();
}

enum Field : std::size_t {
    kRoutingKey,
    kMessageId,
    kContentType,
    kAttempt,
    kEnqueuedAt,
    kTraceparent,
    kTimestamp,
    kCorrelationId,
    kBody,
    kFields
};

std::array<std::string_view, kFields> split(std::string_view input) {
    std::array<std::string_view, kFields> fields{};
    for (std::size_t i = 0; i < kBody; ++i) {
        const auto separator = input.find('\xFF');
        fields[i] = input.substr(0, separator);
        if (separator == std::string_view::npos) {
            return fields;
        }
        input.remove_prefix(separator + 1);
    }
    fields[kBody] = input;
    return fields;
}

template <typename Number>
bool read_number(std::string_view text, Number& value) {
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    return error == std::errc{} && end == text.data() + text.size();
}

void add_header(amqp::Headers& headers, std::string_view name, std::string_view text) {
    if (text.empty()) {
        return;
    }
    std::int64_t integer = 0;
    double real = 0;
    if (read_number(text, integer)) {
        headers.emplace_back(std::string(name), integer);
    } else if (text == "true" || text == "false") {
        headers.emplace_back(std::string(name), text == "true");
    } else if (read_number(text, real)) {
        headers.emplace_back(std::string(name), real);
    } else {
        headers.emplace_back(std::string(name), std::string(text));
    }
}

/// What an outcome says, to compare the padded and the unpadded parse.
std::string outcome(const boost::system::result<conveyor::Envelope, conveyor::EnvelopeError>& result) {
    if (!result) {
        return std::string("error ") + std::string(conveyor::reason_code(result.error().errc)) + ": " +
               result.error().detail;
    }
    const auto& envelope = *result;
    std::string text = "ok " + envelope.job_id + "|" + envelope.type + "|" + envelope.family + "|" +
                       envelope.correlation_id + "|" + envelope.traceparent + "|" + std::to_string(envelope.attempt) +
                       "|";
    if (envelope.enqueued_at) {
        text += std::to_string(envelope.enqueued_at->time_since_epoch().count());
    }
    return text + "|" + simdjson::minify(envelope.payload);
}

void check_accepted(const conveyor::Envelope& envelope) {
    if (!conveyor::is_valid_job_type(envelope.type)) {
        violated("accepted an invalid job type:", envelope.type);
    }
    if (envelope.family != envelope.type.substr(0, envelope.type.find('.'))) {
        violated("family is not the type's first part:", envelope.family);
    }
    if (envelope.job_id.empty() || envelope.job_id.size() > conveyor::kMaxJobIdBytes) {
        violated("accepted a job id of bad length:", envelope.job_id);
    }
    if (envelope.attempt < 1) {
        violated("attempt below 1");
    }
    if (!envelope.payload.is_object()) {
        violated("accepted a payload that is not an object");
    }
    if (const auto violation = conveyor::json::check(envelope.payload)) {
        violated("accepted payload fails json::check:", violation->message);
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
    spdlog::set_level(spdlog::level::off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto fields = split({reinterpret_cast<const char*>(data), size});
    amqp::Message message;
    message.exchange = "conveyor.jobs";
    message.routing_key = fields[kRoutingKey];
    message.properties.message_id = fields[kMessageId];
    message.properties.content_type = fields[kContentType];
    message.properties.correlation_id = fields[kCorrelationId];
    add_header(message.properties.headers, "x-conveyor-attempt", fields[kAttempt]);
    add_header(message.properties.headers, "x-conveyor-enqueued-at", fields[kEnqueuedAt]);
    add_header(message.properties.headers, "traceparent", fields[kTraceparent]);
    if (std::uint64_t timestamp = 0; read_number(fields[kTimestamp], timestamp)) {
        message.properties.timestamp = timestamp;
    }
    // A body whose length is exactly its capacity (for all but the short-string buffer), which the parser copies.
    message.body = std::string(fields[kBody]);

    const conveyor::EnvelopeLimits limits;
    simdjson::dom::parser parser;
    const auto result = conveyor::parse_envelope(message, limits, parser);
    if (result) {
        check_accepted(*result);
    }
    const auto unpadded = outcome(result);

    // The same body with simdjson's padding after it, which the parser reads in place.
    auto padded_message = message;
    padded_message.body.reserve(padded_message.body.size() + simdjson::SIMDJSON_PADDING);
    simdjson::dom::parser padded_parser;
    const auto padded_result = conveyor::parse_envelope(padded_message, limits, padded_parser);
    if (padded_result) {
        check_accepted(*padded_result);
    }
    if (outcome(padded_result) != unpadded) {
        violated("padded and unpadded bodies parse differently:", unpadded);
    }
    return 0;
}
