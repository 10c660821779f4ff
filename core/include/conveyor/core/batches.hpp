#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "conveyor/core/pg.hpp"

/// Batches in conveyor.batches: jobs that carry one id (x-conveyor-batch), a batch opened, filled in any number of
/// calls and sealed, and a callback job enqueued exactly once when, after the seal, every member has ended
/// (succeeded, dead-lettered, cancelled or deduplicated), with the counts. Workers record each member's end before
/// they acknowledge it; the dead-letter archiver records members the broker dead-lettered on its own.
namespace conveyor::batches {

/// No batch has that id.
class NoSuchBatch : public std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};
/// The batch is not in a state that allows it: its id is taken, or it is sealed already.
class BatchConflict : public std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

/// A batch to open. An empty id gets a fresh one.
struct Opening {
    std::string id;
    std::string description;
    std::string callback_type;            ///< empty: no callback
    std::string callback_payload = "{}";  ///< a JSON object; the callback's payload also gets "batch": {id, counts}
    std::string opened_by;
};

/// A batch as stored, with how many of its members ended in each state.
struct Batch {
    std::string id;
    std::string description;
    std::string callback_type;
    std::string opened_at;
    std::string opened_by;
    std::int64_t added = 0;
    std::optional<std::int64_t> expected;
    std::string sealed_at;    ///< empty while open
    std::string finished_at;  ///< empty until finished
    std::string callback_job_id;
    std::string callback_error;  ///< why a finished batch's callback could not be enqueued
    std::int64_t succeeded = 0;
    std::int64_t dead_lettered = 0;
    std::int64_t cancelled = 0;
    std::int64_t deduplicated = 0;

    [[nodiscard]] std::int64_t ended() const noexcept { return succeeded + dead_lettered + cancelled + deduplicated; }
    /// The members it has in all, as far as it is known: expected once sealed with a count, else those added.
    [[nodiscard]] std::int64_t total() const noexcept { return expected.value_or(added); }
};

/// How a member ended, for record().
struct MemberEnd {
    std::string batch_id;
    std::string job_id;
    std::string state;  ///< succeeded, dead_lettered, cancelled or deduplicated
};

/// Opens a batch and returns its id. Throws BatchConflict (the id is taken), std::invalid_argument (the id is
/// malformed, the callback is not a job type, its payload not a JSON object) and pg::Error.
[[nodiscard]] boost::asio::awaitable<std::string> open(pg::Pool& pool, const Opening& opening);

/// Counts `count` more members added through Conveyor, before they are published. Throws NoSuchBatch or
/// BatchConflict (sealed).
boost::asio::awaitable<void> count_added(pg::Pool& pool, const std::string& batch_id, std::int64_t count);

/// Seals the batch, with the number of members it has in all if given (needed when publishers send members over
/// AMQP themselves); finishes it at once if they have all ended. Throws NoSuchBatch, BatchConflict (sealed already),
/// std::invalid_argument (fewer than added) and pg::Error.
boost::asio::awaitable<void> seal(pg::Pool& pool, const std::string& batch_id, std::optional<std::int64_t> expected);

/// The batch as JSON: its state (open, sealed, finished), counts by how members ended, progress.
[[nodiscard]] boost::json::object to_json(const Batch& batch);

/// The batch, or empty.
[[nodiscard]] boost::asio::awaitable<std::optional<Batch>> find(pg::Pool& pool, const std::string& batch_id);

/// The unfinished batches, then those finished in the last day, newest first within each, at most `limit` in all.
[[nodiscard]] boost::asio::awaitable<std::vector<Batch>> recent(pg::Pool& pool, std::int64_t limit);

/// Records how members ended (members of unknown or finished batches are ignored) and finishes the batches that are
/// complete, in one transaction. Returns how many batches it finished.
[[nodiscard]] boost::asio::awaitable<std::int64_t> record(pg::Pool& pool, const std::vector<MemberEnd>& ends);

}  // namespace conveyor::batches
