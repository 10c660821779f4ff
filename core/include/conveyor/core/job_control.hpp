#pragma once

#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/pg.hpp"

/// Fleet-wide commands: a durable record in PostgreSQL (the truth, which a worker that starts or reconnects
/// later reads) and a broadcast on the conveyor.control fanout exchange (which reaches every running worker at
/// once). The CLI and the HTTP API issue them; workers obey.
namespace conveyor::job_control {

/// A command as the control exchange carries it: a JSON body, {"command":"cancel","job_id":"…"}.
struct Command {
    std::string command;  ///< cancel
    std::string job_id;
};

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

/// Publishes `command` on the control exchange; completes once the broker confirms (or with the error).
boost::asio::awaitable<boost::system::error_code> broadcast(amqp::Connection& publisher, const Command& command);

/// Tombstones recorded after `after` (a seq), oldest first.
struct Tombstones {
    std::vector<std::string> job_ids;
    std::int64_t last_seq = 0;
};
boost::asio::awaitable<Tombstones> tombstones_since(pg::Pool& pool, std::int64_t after);

/// Deletes tombstones older than `retention`; returns how many.
boost::asio::awaitable<std::int64_t> prune(pg::Pool& pool, std::chrono::milliseconds retention);

}  // namespace conveyor::job_control
