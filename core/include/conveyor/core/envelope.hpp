#pragma once

#include <simdjson.h>

#include <boost/system/result.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "conveyor/core/amqp.hpp"

namespace conveyor {

/// Why a message is not a job. Each maps to the dead-letter reason ops filter on.
enum class EnvelopeErrc {
    too_large,         ///< body exceeds the size limit, or nests deeper than json::kMaxDepth
    bad_json,          ///< body is not valid JSON, or an object in it repeats a key
    invalid_payload,   ///< body is JSON but not an object
    invalid_envelope,  ///< message_id missing or malformed, or a content type other than JSON
    unknown_type,      ///< the routing key is not a job type
};

/// The dead-letter reason for an envelope error: "too_large", "bad_json", "invalid_payload", "invalid_envelope",
/// "unknown_type".
[[nodiscard]] std::string_view reason_code(EnvelopeErrc errc) noexcept;

struct EnvelopeError {
    EnvelopeErrc errc;
    std::string detail;  ///< human-readable, safe to log: never contains payload values
};

/// Exceptions from result<Envelope, EnvelopeError>::value().
class InvalidEnvelope : public std::runtime_error {
  public:
    explicit InvalidEnvelope(EnvelopeError error);
    [[nodiscard]] const EnvelopeError& error() const noexcept { return error_; }

  private:
    EnvelopeError error_;
};

[[noreturn]] void throw_exception_from_error(const EnvelopeError& error, const boost::source_location& location);

struct EnvelopeLimits {
    /// Largest accepted body in bytes.
    std::size_t max_body_bytes = std::size_t{1024} * 1024;
};

/// A validated job: its identity from the AMQP properties, its type from the routing key, its payload parsed.
struct Envelope {
    std::string job_id;          ///< message_id
    std::string type;            ///< routing key, "<family>.<action>" (without the delay ladder's prefix)
    std::string family;          ///< the part of type before the first dot
    std::string correlation_id;  ///< may be empty
    std::string traceparent;     ///< W3C trace context header, may be empty
    /// x-conveyor-enqueued-at (ms) or, failing that, the AMQP timestamp (s).
    std::optional<std::chrono::system_clock::time_point> enqueued_at;
    /// 1 for the first attempt; x-conveyor-attempt on a retried message.
    std::uint32_t attempt = 1;
    /// x-conveyor-unique-key: no other job of the type with this key runs while this one is queued or running,
    /// nor for `unique_for` after it ends. Empty for a job that is not unique.
    std::string unique_key;
    std::chrono::seconds unique_for{0};
    /// x-conveyor-batch: the batch the job is a member of, told how it ended. Empty for a job of no batch.
    std::string batch;
    /// The JSON object body. Valid while the parser that produced it is not reused.
    simdjson::dom::element payload;
};

inline constexpr std::size_t kMaxJobIdBytes = 128;

/// A job type is "<family>.<action>" of lower-case letters, digits, '_' and '-'.
[[nodiscard]] bool is_valid_job_type(std::string_view type) noexcept;

/// Stamps when a job was enqueued, as parse_envelope() reads it back: x-conveyor-enqueued-at (ms since the epoch)
/// and the AMQP timestamp (s), for consumers that only read the latter.
void set_enqueued_at(amqp::Properties& properties, std::int64_t epoch_ms);

/// Validates and parses a message into an Envelope, using `parser` for the body.
[[nodiscard]] boost::system::result<Envelope, EnvelopeError> parse_envelope(const amqp::Message& message,
                                                                            const EnvelopeLimits& limits,
                                                                            simdjson::dom::parser& parser);

}  // namespace conveyor
