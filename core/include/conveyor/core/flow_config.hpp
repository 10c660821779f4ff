#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "conveyor/core/pg.hpp"

/// The flow limits in force: one YAML file (`conveyor flow apply FILE`), stored in conveyor.flow_config with a
/// version, read by every worker. The same parser checks a file before it is stored and reads the stored one.
namespace conveyor::flow {

/// At most `limit` jobs of the type with the same key run at once across the fleet. The key is the payload's value
/// at `key_pointer` (RFC 6901, e.g. /customer_id); jobs without it share the key "".
struct ConcurrencyLimit {
    std::string key_pointer;
    std::uint32_t limit = 1;
};

/// At most `per_second` starts of the type per second across the fleet, with bursts of up to `burst` starts (a token
/// bucket). With a `key_pointer`, each key of the payload has a bucket of its own.
struct RateLimit {
    double per_second = 1;
    std::uint32_t burst = 1;
    std::string key_pointer;  ///< empty: one bucket for the whole type
};

struct TypeLimits {
    std::optional<ConcurrencyLimit> concurrency;
    std::optional<RateLimit> rate;
};

struct FlowConfig {
    std::map<std::string, TypeLimits, std::less<>> jobs;

    [[nodiscard]] const TypeLimits* find(std::string_view type) const {
        const auto found = jobs.find(type);
        return found == jobs.end() ? nullptr : &found->second;
    }
};

/// Highest per-key concurrency limit a file may set.
inline constexpr std::uint32_t kMaxConcurrencyLimit = 100'000;
/// Highest rate (starts per second) and burst a file may set.
inline constexpr double kMaxRate = 1'000'000;
inline constexpr std::uint32_t kMaxBurst = 1'000'000;
/// The burst of a rate limit that sets none: a tenth of a second's starts, at least one.
[[nodiscard]] std::uint32_t default_burst(double per_second);

/// Reads a flow file. Throws std::invalid_argument naming `origin`, the line and what is wrong.
[[nodiscard]] FlowConfig parse(std::string_view yaml, std::string_view origin);

/// What a file sets, as JSON (`conveyor flow show --json`).
[[nodiscard]] boost::json::object to_json(const FlowConfig& config);

/// A stored version of the flow file.
struct Applied {
    std::int64_t version = 0;
    std::string source;
    std::string applied_at;  ///< RFC 3339 UTC
    std::string applied_by;
};

/// The version in force after an apply, and whether the apply made it.
struct Stored {
    std::int64_t version = 0;
    bool changed = true;
};

/// Stores `source` as the newest version (it must have parsed), unless the newest version is that file already
/// (applying on every deploy then adds no version). Throws pg::Error.
boost::asio::awaitable<Stored> apply(pg::Pool& pool, const std::string& source, const std::string& by);

/// The newest stored version if it is newer than `after`. Throws pg::Error.
boost::asio::awaitable<std::optional<Applied>> newest(pg::Pool& pool, std::int64_t after = 0);

/// {version, applied_at, applied_by, limits, source}: a stored version and the limits it sets.
[[nodiscard]] boost::json::object to_json(const Applied& applied, const FlowConfig& config);

/// What the limits hold back now, per job type and kind (concurrency, rate): jobs in the waiting lines, over how
/// many keys, waiting since when, and (concurrency) the places held by running jobs. A JSON array of {type, kind,
/// waiting, keys, oldest_waiting_since, running}.
boost::asio::awaitable<boost::json::value> held_back(pg::Pool& pool);

}  // namespace conveyor::flow
