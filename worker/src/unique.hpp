#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <optional>
#include <variant>

#include "conveyor/core/envelope.hpp"
#include "conveyor/core/job.hpp"
#include "conveyor/core/pg.hpp"
#include "housekeeping.hpp"

namespace conveyor::worker {

/// A unique job's key through the worker's stages: claimed at admission, held for the job's window from the moment
/// its end is decided (before its ack, so a crash leaves the key held for the job's redelivery rather than forever),
/// freed by a cancel. Jobs without a key cost nothing here. While PostgreSQL is away a key cannot be checked, so the
/// job waits for it, holding its delivery: a limit that cannot be checked holds jobs back, never lets them through.
class UniqueKeys {
  public:
    /// How a unique job's attempt ended, for its key.
    enum class End { retried, finished, cancelled };

    UniqueKeys(pg::Pool& pool, DatabaseHealth& database, const std::atomic<bool>& draining)
        : pool_(pool), database_(database), draining_(draining) {}

    /// Whether the job holds its key (true for a job without one); empty if the worker began draining while the
    /// database was away.
    [[nodiscard]] boost::asio::awaitable<std::optional<bool>> claim(const Envelope& envelope, const JobLogger& log);

    /// Starts the key's window (finished), frees it (cancelled), or keeps it for the next attempt (retried).
    boost::asio::awaitable<void> after_attempt(const Envelope& envelope, End end, const JobLogger& log);

  private:
    pg::Pool& pool_;
    DatabaseHealth& database_;
    const std::atomic<bool>& draining_;
};

}  // namespace conveyor::worker
