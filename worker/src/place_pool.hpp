#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "conveyor/core/async_condition.hpp"

namespace conveyor::worker {

/// A job's place under its type's per-key concurrency limit.
struct ConcurrencyPlace {
    std::string type;
    std::string key;
    std::uint32_t limit = 0;
    /// The job id the database holds the place under, once the job has it: a place this worker reuses keeps the id
    /// of the job that first took it.
    std::string label;
};

/// Which key of which type a place belongs to.
struct PlaceKey {
    std::string type;
    std::string key;
    bool operator==(const PlaceKey&) const = default;
    bool operator<(const PlaceKey& other) const { return std::tie(type, key) < std::tie(other.type, other.key); }
};

/// The places of per-key concurrency limits that this worker holds in PostgreSQL, reused here: a job done with its
/// place hands it to the next job of its key on this worker, which starts without a round trip to the database. The
/// fleet-wide count holds, since a place changes hands only within the worker that holds it.
///
/// A place no job of this worker needs stays here for a short while (`linger`) for the key's next job, then is
/// freed in the database. A key whose jobs wait in the database's line (other workers' jobs, or jobs that could not
/// wait here) is contended: its free places are given up at once and none is kept, so that the line gets each place
/// as it frees; only the few jobs already waiting here still take one. Thread-safe.
class PlacePool {
  public:
    using Clock = std::chrono::steady_clock;
    struct Settings {
        std::chrono::milliseconds linger{500};
        /// Jobs waiting here for a place, over all keys: each holds a coroutine, so they are few.
        std::size_t max_waiters = 50;
    };

    explicit PlacePool(Settings settings) : settings_(settings) {}

    /// A free place of the place's key, now in use (its label set); false if there is none or the key is contended.
    [[nodiscard]] bool take_free(ConcurrencyPlace& place);
    /// A place the database granted (labelled), in use from now on.
    void add(const ConcurrencyPlace& place);
    /// Waits up to `patience` for a place of the key that one of this worker's jobs frees, and takes it (its label
    /// set). False at once if this worker holds no place of the key in use, the key is contended, or enough jobs
    /// wait here already (as many as the limit for one key); false too if the wait ran out or stop() was called.
    boost::asio::awaitable<bool> wait_for_place(ConcurrencyPlace& place, std::chrono::milliseconds patience);
    /// A job is done with its place: the first job waiting for the key takes it, else it stays free here. Returns it
    /// if it is to be freed in the database instead (the key is contended).
    [[nodiscard]] std::optional<ConcurrencyPlace> put_back(ConcurrencyPlace place);
    /// Marks which of the keys held here have jobs waiting in the database's line; returns the free places of
    /// those keys, given up (to be freed in the database).
    [[nodiscard]] std::vector<ConcurrencyPlace> set_contended(const std::set<PlaceKey>& contended);
    /// Marks one key contended (a job of it is going into the line); returns its free places, given up.
    [[nodiscard]] std::vector<ConcurrencyPlace> contend(const PlaceKey& key);
    /// Takes out the free places unused since before `now - linger` (all of them if `everything`), to be freed in
    /// the database.
    [[nodiscard]] std::vector<ConcurrencyPlace> take_unused(Clock::time_point now, bool everything = false);
    /// The keys of which this worker holds places.
    [[nodiscard]] std::vector<PlaceKey> keys() const;
    /// Ends every wait (the worker is draining); no job waits here afterwards.
    void stop() noexcept;

  private:
    struct Waiter {
        std::optional<std::string> label;
    };
    struct Free {
        std::string label;
        Clock::time_point since;
    };
    struct KeyState {
        std::uint32_t limit = 0;
        std::size_t in_use = 0;
        std::deque<Free> free;
        std::deque<std::shared_ptr<Waiter>> waiters;
    };

    /// Under the lock: whether the place's job may wait here, and its ticket if so.
    std::shared_ptr<Waiter> enlist(const ConcurrencyPlace& place);
    /// Under the lock: takes the waiter off its key; true if a place was handed to it meanwhile.
    bool leave(const PlaceKey& key, const std::shared_ptr<Waiter>& waiter);
    /// Under the lock: forgets a key nothing is held or awaited for.
    void forget_if_unused(std::map<PlaceKey, KeyState>::iterator entry);

    Settings settings_;
    mutable std::mutex mutex_;
    std::map<PlaceKey, KeyState> keys_;
    /// Apart from keys_, whose entries go when nothing is held: a key's next place must see its line.
    std::set<PlaceKey> contended_;
    std::size_t waiters_ = 0;
    bool stopped_ = false;
    AsyncCondition handed_over_;
};

}  // namespace conveyor::worker
