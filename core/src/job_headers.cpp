#include "conveyor/core/job_headers.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>

#include "conveyor/core/config.hpp"
#include "conveyor/core/utf8.hpp"

namespace conveyor::job_headers {

namespace {

constexpr std::array<std::string_view, 10> kFailureHeaders = {
    kAttempt,       kAttempts,           kError,   kReason,           kFailedAt, kWorker,
    kOriginalQueue, kOriginalRoutingKey, kRetryAt, "x-delivery-count"};
constexpr std::array<std::string_view, 3> kFailureHeaderPrefixes = {"x-death", "x-first-death-", "x-last-death-"};

bool describes_failure(std::string_view name) {
    return std::find(kFailureHeaders.begin(), kFailureHeaders.end(), name) != kFailureHeaders.end() ||
           std::any_of(kFailureHeaderPrefixes.begin(), kFailureHeaderPrefixes.end(),
                       [name](std::string_view prefix) { return name.starts_with(prefix); });
}

/// A header as text: strings as they are, integers in decimal, anything else empty.
std::string text_of(const amqp::Headers& headers, std::string_view name) {
    const auto* value = amqp::find_header(headers, name);
    if (value == nullptr) {
        return {};
    }
    if (const auto* text = std::get_if<std::string>(value)) {
        return *text;
    }
    if (const auto* number = std::get_if<std::int64_t>(value)) {
        return std::to_string(*number);
    }
    return {};
}

std::uint32_t count_of(const amqp::Headers& headers, std::string_view name) {
    const auto* value = amqp::find_header(headers, name);
    const auto* number = value == nullptr ? nullptr : std::get_if<std::int64_t>(value);
    if (number == nullptr || *number < 0) {
        return 0;
    }
    return static_cast<std::uint32_t>(std::min<std::int64_t>(*number, UINT32_MAX));
}

}  // namespace

bool is_batch_id(std::string_view id) {
    return !id.empty() && id.size() <= kMaxBatchIdBytes && id.find('\0') == std::string_view::npos &&
           utf8::sanitized(id) == id;
}

std::string bounded(std::string_view text, std::size_t limit) {
    if (text.size() <= limit) {
        return std::string(text);
    }
    while (limit > 0 && (static_cast<unsigned char>(text[limit]) & 0xC0U) == 0x80U) {
        --limit;
    }
    return fmt::format("{}…", text.substr(0, limit));
}

void stamp_failure(amqp::Headers& headers, const Failure& failure) {
    amqp::set_header(headers, kReason, failure.reason);
    amqp::set_header(headers, kError, bounded(failure.error, kMaxErrorBytes));
    amqp::set_header(headers, kAttempts, std::int64_t{failure.attempts});
    amqp::set_header(headers, kOriginalRoutingKey, failure.original_routing_key);
    amqp::set_header(headers, kOriginalQueue, failure.original_queue);
    amqp::set_header(headers, kFailedAt, failure.failed_at);
    amqp::set_header(headers, kWorker, failure.worker);
}

Failure read_failure(const amqp::Headers& headers) {
    Failure failure;
    failure.reason = text_of(headers, kReason);
    failure.error = text_of(headers, kError);
    // A job the broker dead-lettered from the delay ladder or its queue has only its last attempt number.
    failure.attempts =
        amqp::find_header(headers, kAttempts) != nullptr ? count_of(headers, kAttempts) : count_of(headers, kAttempt);
    failure.original_routing_key = text_of(headers, kOriginalRoutingKey);
    failure.original_queue = text_of(headers, kOriginalQueue);
    failure.failed_at = text_of(headers, kFailedAt);
    failure.worker = text_of(headers, kWorker);
    return failure;
}

void stamp_retry(amqp::Headers& headers, std::uint32_t next_attempt, std::string_view error,
                 std::chrono::system_clock::time_point due) {
    amqp::set_header(headers, kAttempt, std::int64_t{next_attempt});
    amqp::set_header(headers, kError, bounded(error, kMaxErrorBytes));
    amqp::set_header(
        headers, kRetryAt,
        std::int64_t{std::chrono::duration_cast<std::chrono::milliseconds>(due.time_since_epoch()).count()});
}

void strip_failure(amqp::Headers& headers) {
    std::erase_if(headers, [](const auto& header) { return describes_failure(header.first); });
}

void stamp_replay(amqp::Headers& headers, std::chrono::system_clock::time_point at, std::string_view by,
                  std::string_view dead_letter_id) {
    amqp::set_header(headers, kReplayedAt, utc_timestamp(at));
    amqp::set_header(headers, kReplayedBy, std::string(by));
    amqp::set_header(headers, kReplayedFrom, std::string(dead_letter_id));
}

}  // namespace conveyor::job_headers
