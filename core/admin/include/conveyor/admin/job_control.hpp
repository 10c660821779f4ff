#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/pg.hpp"

/// Fleet-wide commands: a durable record in PostgreSQL (the truth, which a worker that starts or reconnects
/// later reads) and a broadcast on the conveyor.control fanout exchange (which reaches every running worker at
/// once). The CLI and the HTTP API issue them; workers obey.
namespace conveyor::job_control {

/// A family, or one job type of it, that workers start no jobs of while it is paused. The version orders the
/// states of one target: a worker applies a state only if its version is higher than the one it holds.
struct PauseState {
    std::string family;
    std::string job_type;  ///< empty: the whole family
    bool paused = false;
    std::int64_t version = 0;
    std::string changed_at;  ///< UTC, ISO 8601; empty in a broadcast
    std::string changed_by;  ///< empty in a broadcast
};

/// Cancel one job wherever it is.
struct Cancel {
    std::string job_id;
};

/// A command as the control exchange carries it, as a JSON body: {"command":"cancel","job_id":"…"}, or
/// {"command":"pause"|"resume","family":"…","type":"…","version":N} ("type" empty or absent: the whole family).
using Command = std::variant<Cancel, PauseState>;

[[nodiscard]] std::string encode(const Command& command);
/// Nothing for a body that is not such a command (a worker acks and ignores it).
[[nodiscard]] std::optional<Command> decode(std::string_view body);

/// What a cancel request found and did.
struct CancelOutcome {
    enum class Result {
        cancelled,       ///< it was scheduled in PostgreSQL: it never will be published
        cancelling,      ///< queued, running or waiting to retry: the worker that takes or runs it stops it
        cancel_pending,  ///< not on record yet (it may still be queued): whoever takes it settles it as cancelled
        terminal,        ///< it had already ended: nothing was changed
    };
    Result result = Result::cancel_pending;
    std::string state;  ///< the job's state when the request came, empty if not on record
};
[[nodiscard]] std::string_view name(CancelOutcome::Result result) noexcept;

/// Records the tombstone of `job_id` (who asked: `by`) unless the job has ended, and cancels its pending
/// scheduled row. Call broadcast() after, so that a worker running it stops now.
boost::asio::awaitable<CancelOutcome> request_cancel(pg::Pool& pool, std::string_view job_id, std::string_view by);

/// Publishes `command` on the control exchange; completes once the broker confirms (or with the error). No worker
/// bound to the exchange is no failure: the record waits for the next one to start.
boost::asio::awaitable<boost::system::error_code> broadcast(amqp::Connection& publisher, const Command& command);

/// Tombstones recorded after `after` (a seq), oldest first.
struct Tombstones {
    std::vector<std::string> job_ids;
    std::int64_t last_seq = 0;
};
boost::asio::awaitable<Tombstones> tombstones_since(pg::Pool& pool, std::int64_t after);

/// Deletes tombstones older than `retention`; returns how many.
boost::asio::awaitable<std::int64_t> prune(pg::Pool& pool, std::chrono::milliseconds retention);

/// Throws std::invalid_argument saying what is wrong unless `family` is a family of the wire contract and
/// `job_type` is empty or a valid type of that family.
void check_pause_target(std::string_view family, std::string_view job_type);

/// What a pause or resume request found and did.
struct PauseChange {
    PauseState state;      ///< the target's state now
    bool changed = false;  ///< false: it was already in that state, and nothing was written
};

/// Pauses (or resumes) `family`, or only `job_type` of it, on record; `by` names who asked. Call broadcast() with
/// the new state after, so that running workers obey now. Checks the target first (check_pause_target).
boost::asio::awaitable<PauseChange> set_paused(pg::Pool& pool, std::string_view family, std::string_view job_type,
                                               bool paused, std::string_view by);

/// As the CLI's --json and the HTTP API show it: family, queue, type (null for the whole family), paused,
/// changed_at, changed_by.
[[nodiscard]] boost::json::object to_json(const PauseState& state);

/// What is paused of one family now, from the states on record.
struct FamilyPause {
    std::optional<PauseState> whole;  ///< the whole family's pause, if it is paused
    std::vector<std::string> types;   ///< its types paused on their own
};
[[nodiscard]] FamilyPause family_pause(const std::vector<PauseState>& states, std::string_view family);
/// {"paused": whether the whole family is, "paused_types": [...]}, as `conveyor queues --json` and GET /v1/queues
/// show it.
[[nodiscard]] boost::json::object to_json(const FamilyPause& pause);

/// Every pause on record, paused or resumed, by family and type.
boost::asio::awaitable<std::vector<PauseState>> pauses(pg::Pool& pool);

}  // namespace conveyor::job_control
