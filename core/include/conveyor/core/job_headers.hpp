#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "conveyor/core/amqp.hpp"

/// The AMQP headers Conveyor writes on a job as it moves through retries, dead letters and replays: their names and
/// how each stage stamps and reads them. The worker, the scheduler's archiver and the replay all go through here.
namespace conveyor::job_headers {

inline constexpr std::string_view kEnqueuedAt = "x-conveyor-enqueued-at";
inline constexpr std::string_view kAttempt = "x-conveyor-attempt";
inline constexpr std::string_view kRetryAt = "x-conveyor-retry-at";
inline constexpr std::string_view kError = "x-conveyor-error";
inline constexpr std::string_view kReason = "x-conveyor-reason";
inline constexpr std::string_view kAttempts = "x-conveyor-attempts";
inline constexpr std::string_view kFailedAt = "x-conveyor-failed-at";
inline constexpr std::string_view kWorker = "x-conveyor-worker";
inline constexpr std::string_view kOriginalQueue = "x-conveyor-original-queue";
inline constexpr std::string_view kOriginalRoutingKey = "x-conveyor-original-routing-key";
inline constexpr std::string_view kReplayedAt = "x-conveyor-replayed-at";
inline constexpr std::string_view kReplayedBy = "x-conveyor-replayed-by";
inline constexpr std::string_view kReplayedFrom = "x-conveyor-replayed-from";
/// On a job a waiting line released: the limit that let it go ("concurrency" or "rate"), so that a worker takes what
/// the line promised it (a place, a pass) rather than another.
inline constexpr std::string_view kPromised = "x-conveyor-promised";
/// A unique job's key (1 to 255 bytes of text) and its window in whole seconds after the job ends.
inline constexpr std::string_view kUniqueKey = "x-conveyor-unique-key";
inline constexpr std::string_view kUniqueFor = "x-conveyor-unique-for";
/// The longest window: ten years, the bound of every other time a job carries.
inline constexpr std::int64_t kMaxUniqueForSeconds = 315'360'000;
inline constexpr std::size_t kMaxUniqueKeyBytes = 255;
/// The batch a job is a member of (conveyor batches): its id, 1 to 128 bytes of text.
inline constexpr std::string_view kBatch = "x-conveyor-batch";
inline constexpr std::size_t kMaxBatchIdBytes = 128;
/// Whether `id` is a batch id: UTF-8 text of 1 to kMaxBatchIdBytes bytes without U+0000.
[[nodiscard]] bool is_batch_id(std::string_view id);

/// An error as a header holds it: at most this many bytes, cut between characters and marked with an ellipsis.
inline constexpr std::size_t kMaxErrorBytes = 1024;

/// `text` cut to at most `limit` bytes (plus an ellipsis), never through a UTF-8 character.
[[nodiscard]] std::string bounded(std::string_view text, std::size_t limit);

/// Why a job was dead-lettered and where it came from.
struct Failure {
    std::string reason;  ///< e.g. attempts_exhausted, invalid_payload, bad_json
    std::string error;
    std::uint32_t attempts = 0;
    std::string original_routing_key;  ///< the job type it was published as
    std::string original_queue;
    std::string failed_at;  ///< RFC 3339 UTC
    std::string worker;     ///< the worker instance that gave up on it
};

/// Stamps the failure on a message bound for a dead-letter queue (the error bounded to kMaxErrorBytes).
void stamp_failure(amqp::Headers& headers, const Failure& failure);

/// The failure a dead letter carries; fields the worker did not stamp (the broker dead-lettered it) stay empty.
/// Text is as received: the caller decides what invalid UTF-8 becomes.
[[nodiscard]] Failure read_failure(const amqp::Headers& headers);

/// Stamps the next attempt of a retried job, why the last one failed, and when the next is due.
void stamp_retry(amqp::Headers& headers, std::uint32_t next_attempt, std::string_view error,
                 std::chrono::system_clock::time_point due);

/// Removes what describes a failure, Conveyor's headers and the broker's dead-lettering history (x-death,
/// x-first-death-*, x-last-death-*, x-delivery-count): a replayed job starts afresh and must not look quarantined.
void strip_failure(amqp::Headers& headers);

/// Stamps who replayed a dead letter, when, and which one (its id in conveyor.dead_letters).
void stamp_replay(amqp::Headers& headers, std::chrono::system_clock::time_point at, std::string_view by,
                  std::string_view dead_letter_id);

}  // namespace conveyor::job_headers
