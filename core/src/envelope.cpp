#include "conveyor/core/envelope.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>

#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/json.hpp"
#include "conveyor/core/topology.hpp"
#include "conveyor/core/utf8.hpp"

namespace conveyor {

namespace {

bool is_type_char(char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

// Enqueue times are believed up to 2200-01-01: system_clock counts nanoseconds and ends in 2262, so a later (or
// hostile) header would overflow it. A time outside the range is ignored, as a missing one is.
constexpr std::int64_t kLatestEpochMillis = 7'258'118'400'000;

bool is_epoch_millis(std::int64_t millis) noexcept {
    return millis >= 0 && millis <= kLatestEpochMillis;
}

EnvelopeError error(EnvelopeErrc errc, std::string detail) {
    return EnvelopeError{errc, std::move(detail)};
}

/// Publishers that set no content type are trusted to send JSON, as the contract asks; one that names another
/// type (e.g. text/plain, application/x-protobuf) is sending something this worker cannot read.
bool is_json_content_type(std::string_view content_type) noexcept {
    const auto media_type = content_type.substr(0, content_type.find(';'));
    constexpr std::string_view kJson = "application/json";
    return media_type.empty() || (media_type.size() == kJson.size() &&
                                  std::equal(media_type.begin(), media_type.end(), kJson.begin(), [](char a, char b) {
                                      return std::tolower(static_cast<unsigned char>(a)) == b;
                                  }));
}

/// The unique window in whole seconds: an integer, or its decimal text (some clients send every header as text).
std::optional<std::int64_t> unique_seconds(const amqp::FieldValue& value) {
    std::int64_t seconds = -1;
    if (const auto* number = std::get_if<std::int64_t>(&value)) {
        seconds = *number;
    } else if (const auto* text = std::get_if<std::string>(&value)) {
        const auto [end, failure] = std::from_chars(text->data(), text->data() + text->size(), seconds);
        if (failure != std::errc{} || end != text->data() + text->size()) {
            return std::nullopt;
        }
    }
    if (seconds < 0 || seconds > job_headers::kMaxUniqueForSeconds) {
        return std::nullopt;
    }
    return seconds;
}

/// x-conveyor-unique-key and x-conveyor-unique-for into the envelope; what is wrong with them otherwise.
boost::system::result<void, std::string> read_unique(const amqp::Headers& headers, Envelope& envelope) {
    const auto* key = amqp::find_header(headers, job_headers::kUniqueKey);
    const auto* window = amqp::find_header(headers, job_headers::kUniqueFor);
    if (key != nullptr) {
        const auto* text = std::get_if<std::string>(key);
        // Bound for PostgreSQL, which refuses invalid UTF-8 and U+0000.
        if (text == nullptr || text->empty() || text->size() > job_headers::kMaxUniqueKeyBytes ||
            text->find('\0') != std::string::npos || utf8::sanitized(*text) != *text) {
            return fmt::format("{} must be UTF-8 text of 1 to {} bytes without U+0000", job_headers::kUniqueKey,
                               job_headers::kMaxUniqueKeyBytes);
        }
        envelope.unique_key = *text;
    }
    if (window != nullptr) {
        const auto seconds = unique_seconds(*window);
        if (!seconds) {
            return fmt::format("{} must be whole seconds from 0 to {}", job_headers::kUniqueFor,
                               job_headers::kMaxUniqueForSeconds);
        }
        if (key == nullptr) {
            return fmt::format("{} needs {}", job_headers::kUniqueFor, job_headers::kUniqueKey);
        }
        envelope.unique_for = std::chrono::seconds(*seconds);
    }
    return {};
}

/// x-conveyor-batch into the envelope; what is wrong with it otherwise.
boost::system::result<void, std::string> read_batch(const amqp::Headers& headers, Envelope& envelope) {
    const auto* batch = amqp::find_header(headers, job_headers::kBatch);
    if (batch == nullptr) {
        return {};
    }
    const auto* text = std::get_if<std::string>(batch);
    if (text == nullptr || !job_headers::is_batch_id(*text)) {
        return fmt::format("{} must be UTF-8 text of 1 to {} bytes without U+0000", job_headers::kBatch,
                           job_headers::kMaxBatchIdBytes);
    }
    envelope.batch = *text;
    return {};
}

}  // namespace

std::string_view reason_code(EnvelopeErrc errc) noexcept {
    switch (errc) {
        case EnvelopeErrc::too_large:
            return "too_large";
        case EnvelopeErrc::bad_json:
            return "bad_json";
        case EnvelopeErrc::invalid_payload:
            return "invalid_payload";
        case EnvelopeErrc::invalid_envelope:
            return "invalid_envelope";
        case EnvelopeErrc::unknown_type:
            return "unknown_type";
    }
    return "invalid_envelope";
}

InvalidEnvelope::InvalidEnvelope(EnvelopeError error)
    : std::runtime_error(fmt::format("{}: {}", reason_code(error.errc), error.detail)), error_(std::move(error)) {}

void throw_exception_from_error(const EnvelopeError& error, const boost::source_location& /*location*/) {
    throw InvalidEnvelope(error);
}

void set_enqueued_at(amqp::Properties& properties, std::int64_t epoch_ms) {
    properties.timestamp = static_cast<std::uint64_t>(epoch_ms / 1000);
    amqp::set_header(properties.headers, job_headers::kEnqueuedAt, epoch_ms);
}

bool is_valid_job_type(std::string_view type) noexcept {
    const auto dot = type.find('.');
    if (dot == std::string_view::npos || dot == 0 || dot + 1 == type.size() || type.size() > 255) {
        return false;
    }
    return std::all_of(type.begin(), type.end(), [](char c) { return c == '.' || is_type_char(c); }) &&
           type.find("..") == std::string_view::npos && type.back() != '.';
}

boost::system::result<Envelope, EnvelopeError> parse_envelope(const amqp::Message& message,
                                                              const EnvelopeLimits& limits,
                                                              simdjson::dom::parser& parser) {
    const auto& properties = message.properties;
    if (message.body.size() > limits.max_body_bytes) {
        return error(EnvelopeErrc::too_large,
                     fmt::format("body is {} bytes, limit is {}", message.body.size(), limits.max_body_bytes));
    }
    if (properties.message_id.empty()) {
        return error(EnvelopeErrc::invalid_envelope, "message_id (the job id) is missing");
    }
    if (properties.message_id.size() > kMaxJobIdBytes) {
        return error(EnvelopeErrc::invalid_envelope,
                     fmt::format("message_id is {} bytes, limit is {}", properties.message_id.size(), kMaxJobIdBytes));
    }
    if (!is_json_content_type(properties.content_type)) {
        return error(EnvelopeErrc::invalid_envelope,
                     fmt::format("content_type '{}' is not application/json", properties.content_type.substr(0, 64)));
    }
    const auto type = topology::job_type_of_routing_key(message.routing_key);
    if (!is_valid_job_type(type)) {
        return error(EnvelopeErrc::unknown_type,
                     fmt::format("routing key '{}' is not a job type <family>.<action>", type.substr(0, 64)));
    }

    Envelope envelope;
    // The AMQP layer leaves simdjson's padding after the body when it can, which spares a copy.
    const bool padded = message.body.capacity() >= message.body.size() + simdjson::SIMDJSON_PADDING;
    auto parsed = parser.parse(message.body.data(), message.body.size(), !padded);
    if (parsed.error() != simdjson::SUCCESS) {
        return error(EnvelopeErrc::bad_json,
                     fmt::format("body is not valid JSON: {}", simdjson::error_message(parsed.error())));
    }
    if (!parsed.value_unsafe().is_object()) {
        return error(EnvelopeErrc::invalid_payload, "body must be a JSON object");
    }
    if (auto violation = json::check(parsed.value_unsafe())) {
        const bool deep = violation->kind == json::Violation::Kind::too_deep;
        return error(deep ? EnvelopeErrc::too_large : EnvelopeErrc::bad_json, std::move(violation->message));
    }
    envelope.payload = parsed.value_unsafe();
    envelope.job_id = properties.message_id;
    envelope.type = type;
    envelope.family = envelope.type.substr(0, envelope.type.find('.'));
    envelope.correlation_id = properties.correlation_id;

    envelope.traceparent = amqp::find_text_header(properties.headers, "traceparent");
    if (const auto* enqueued = amqp::find_header(properties.headers, job_headers::kEnqueuedAt)) {
        if (const auto* millis = std::get_if<std::int64_t>(enqueued); millis != nullptr && is_epoch_millis(*millis)) {
            envelope.enqueued_at = std::chrono::system_clock::time_point(std::chrono::milliseconds(*millis));
        }
    }
    if (!envelope.enqueued_at && properties.timestamp && *properties.timestamp <= kLatestEpochMillis / 1000) {
        envelope.enqueued_at = std::chrono::system_clock::time_point(
            std::chrono::seconds(static_cast<std::int64_t>(*properties.timestamp)));
    }
    if (const auto* attempt = amqp::find_header(properties.headers, job_headers::kAttempt)) {
        if (const auto* number = std::get_if<std::int64_t>(attempt); number != nullptr && *number >= 1) {
            envelope.attempt = static_cast<std::uint32_t>(std::min<std::int64_t>(*number, UINT32_MAX));
        }
    }
    if (auto unique = read_unique(properties.headers, envelope); !unique) {
        return error(EnvelopeErrc::invalid_envelope, unique.error());
    }
    if (auto batch = read_batch(properties.headers, envelope); !batch) {
        return error(EnvelopeErrc::invalid_envelope, batch.error());
    }
    return envelope;
}

}  // namespace conveyor
