#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <string>

#include "conveyor/core/pg.hpp"

/// Unique jobs' keys in conveyor.unique_keys: one job per (job type, key) while it is queued or running, and for its
/// window after it ends. A worker claims the key as it admits the job, starts the window before it acknowledges the
/// job's end, and deletes the claim when the job is cancelled; the dead-letter archiver starts the window of a job
/// the broker dead-lettered on its own. Each function is one statement: a pg::Error means the database is away.
namespace conveyor::unique_keys {

/// Whether `job_id` holds (type, key) now: it claims a free or expired key, and keeps one it holds already (its
/// retries and redeliveries). False if another job holds it.
[[nodiscard]] boost::asio::awaitable<bool> claim(pg::Pool& pool, const std::string& type, const std::string& key,
                                                 const std::string& job_id);

/// The job has ended: its key stays held for `window`, then is free (at once for a window of 0).
boost::asio::awaitable<void> hold_after_end(pg::Pool& pool, const std::string& type, const std::string& key,
                                            const std::string& job_id, std::chrono::seconds window);

/// The job was cancelled: its key is free at once.
boost::asio::awaitable<void> release(pg::Pool& pool, const std::string& type, const std::string& key,
                                     const std::string& job_id);

/// Deletes claims whose window is over (a claim is taken over when it expires anyway: this keeps the table small).
/// Returns how many.
[[nodiscard]] boost::asio::awaitable<std::int64_t> delete_expired(pg::Pool& pool);

}  // namespace conveyor::unique_keys
