#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/pg.hpp"

/// Dead letters in conveyor.dead_letters: stored by conveyor-scheduler's archiver, read, grouped, replayed and purged
/// by the operator CLI, the HTTP API and the console alike.
namespace conveyor::dead_letters {

/// Which dead letters an operation applies to; every field narrows it.
struct Filter {
    std::optional<std::string> family;
    std::optional<std::string> type;
    std::optional<std::string> reason;
    std::optional<std::string> error_contains;  ///< case-insensitive substring of the error
    std::optional<std::string> since;           ///< failed at or after (a timestamp PostgreSQL reads)
    std::optional<std::string> until;           ///< failed before
    std::optional<std::string> job_id;
    std::optional<std::string> fingerprint;
    /// dead (default), replayed, or nullopt for both.
    std::optional<std::string> state = std::string("dead");

    /// Throws std::invalid_argument naming the field: an unknown family or state, a malformed fingerprint.
    void validate() const;
};

/// Stores a batch of deliveries from the conveyor.<family>.dlq queues in one transaction, idempotently (the same
/// message again is a no-op, by its archive key; a replayed dead letter that failed again is dead again), and ends
/// what the dead-lettering ends: a unique job's key window, a batch member. Throws pg::Error if the database refuses.
boost::asio::awaitable<void> archive(pg::Pool& pool, const amqp::DeliveryBatch& batch);

/// Oldest first, at most `limit`. Columns: id, job_id, type, family, reason, attempts, failed_at (RFC 3339 UTC),
/// error, fingerprint, state, correlation_id (NULL if none).
boost::asio::awaitable<pg::Result> list(pg::Pool& pool, const Filter& filter, std::int64_t limit);

/// One dead letter, everything. Columns: id, job_id, type, family, queue, routing_key, reason, attempts, failed_at,
/// archived_at, error, error_pattern, fingerprint, correlation_id, headers (JSON text), body (hex), state,
/// replayed_at, replayed_by, replayed_as. No row if there is no such id.
boost::asio::awaitable<pg::Result> show(pg::Pool& pool, std::int64_t id);

/// Counts by family, type and reason, biggest first. Columns: family, type, reason, count, oldest failed_at.
boost::asio::awaitable<pg::Result> stats(pg::Pool& pool, const Filter& filter);

/// Dead letters grouped by error fingerprint, biggest first. Columns: fingerprint, count, error_pattern, types
/// (comma-separated), first failed_at, last failed_at, an example error.
boost::asio::awaitable<pg::Result> groups(pg::Pool& pool, const Filter& filter);

/// A body as show() and claim() return it (hex, as PostgreSQL's encode(body, 'hex')) back to its bytes.
[[nodiscard]] std::string decode_body(std::string_view hex);

/// How many dead letters match.
boost::asio::awaitable<std::int64_t> count(pg::Pool& pool, const Filter& filter);

/// Locks the next `limit` matching dead letters after id `after` (FOR UPDATE SKIP LOCKED, so two replays never take
/// the same one). Columns: id, job_id, type, routing_key, correlation_id, headers (JSON text), body (hex).
boost::asio::awaitable<pg::Result> claim(pg::Transaction& transaction, const Filter& filter, std::int64_t after,
                                         std::int64_t limit);

/// The filter as the audit log names a target: "dead letters type=payments.charge fingerprint=…".
[[nodiscard]] std::string describe(const Filter& filter);

/// Records a replay of `matched` dead letters in the audit log (its job ids are added as they are marked
/// replayed); returns the entry's id.
boost::asio::awaitable<std::int64_t> open_replay_entry(pg::Pool& pool, const Filter& filter, const std::string& by,
                                                       const std::string& as_type, std::int64_t matched);
/// Adds how the replay ended (how many were replayed, why it stopped early) to its audit entry.
boost::asio::awaitable<void> close_replay_entry(pg::Pool& pool, std::int64_t entry, std::int64_t replayed,
                                                const std::string& failure);

/// Marks dead letters replayed, by whom and as which type (empty: their own), counts them per dead-letter queue
/// in conveyor.dead_letter_replays and adds their job ids to the replay's audit entry, in `transaction`.
boost::asio::awaitable<void> mark_replayed(pg::Transaction& transaction, const std::vector<std::string>& ids,
                                           const std::string& by, const std::string& as_type, std::int64_t audit_entry);

struct Purged {
    pg::Result by_type_and_reason;  ///< columns: type, reason, count
    std::int64_t deleted = 0;       ///< how many matched (and were deleted unless refused)
    bool refused = false;           ///< they were not `expected` in number, so none was deleted
};

/// Deletes matching dead letters and records the purge (by `by`, with their job ids) in the audit log, in one
/// transaction. With `expected` (the count the operator confirmed), a different number of matches deletes nothing.
boost::asio::awaitable<Purged> purge(pg::Pool& pool, const Filter& filter, const std::string& by,
                                     std::optional<std::int64_t> expected = std::nullopt);

/// How replayed jobs came out since `since` (a timestamp from the database's clock): how many of `job_ids` are in
/// conveyor.inbox (they ran, in a transaction) and how many were dead-lettered again, with one of the new errors.
struct Outcomes {
    std::int64_t succeeded = 0;
    std::int64_t failed = 0;
    std::string example_error;
};
boost::asio::awaitable<Outcomes> outcomes(pg::Pool& pool, const std::vector<std::string>& job_ids,
                                          const std::string& since);

/// Which dead letters to publish again, and how.
struct ReplayRequest {
    Filter filter;           ///< its state is ignored: only dead ones are replayed
    std::int64_t limit = 0;  ///< 0: every match
    double rate = 0;         ///< jobs per second; 0: as fast as the broker confirms
    std::string to_type;     ///< re-route to this job type; empty: each its own
    std::string by;          ///< who replays, recorded in the row and in a header
    /// Replay this many first, wait for their outcome (see outcomes()), and go on only if all succeeded.
    std::int64_t canary = 0;
    std::chrono::milliseconds canary_timeout{std::chrono::seconds(60)};
    /// Longest wait for the broker to confirm a publish, while the chunk's rows stay locked (a broker under a
    /// resource alarm blocks publishes): the replay then ends with the failure, having replayed what was confirmed.
    std::chrono::milliseconds publish_timeout{std::chrono::seconds(10)};
};

/// How many dead letters `request` covers: the dead ones its filter matches, at most its limit.
boost::asio::awaitable<std::int64_t> count_replayable(pg::Pool& pool, const ReplayRequest& request);

struct ReplayResult {
    std::int64_t matched = 0;   ///< dead letters the request covered when it started (after its limit)
    std::int64_t replayed = 0;  ///< published, confirmed and marked replayed
    bool stopped = false;       ///< stop_requested() ended it early
    std::string failure;        ///< why it ended early: a refused publish, failed canaries
};

struct ReplayHooks {
    std::function<bool()> stop_requested = [] { return false; };
    std::function<void(const ReplayResult&)> on_progress = [](const ReplayResult&) {};
    std::function<void(const std::string&)> on_note = [](const std::string&) {};
};

/// Publishes matching dead letters to the jobs exchange again: the original body, job id (message_id), correlation id
/// and headers, minus the failure's headers (so the attempt count starts afresh), plus x-conveyor-replayed-at, -by
/// and -from (the dead letter's id). Chunks of up to 100 are claimed (FOR UPDATE SKIP LOCKED), published with
/// confirms and marked replayed in one transaction: a crash leaves each dead letter replayable or replayed, and
/// repeats at most one chunk, whose original job ids the jobs' inboxes absorb.
boost::asio::awaitable<ReplayResult> replay(pg::Pool& pool, amqp::Connection& publisher, const ReplayRequest& request,
                                            const ReplayHooks& hooks);

}  // namespace conveyor::dead_letters
