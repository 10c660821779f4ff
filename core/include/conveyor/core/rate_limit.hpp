#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace conveyor {

/// Token buckets by key (a client address, an API token's name), each filled at its own rate up to its own burst.
/// Thread-safe. Memory is bounded: past `max_keys` buckets, the half least recently used is forgotten, so a client
/// that changes its address with every request cannot grow the table (a forgotten bucket starts full again).
class TokenBuckets {
  public:
    explicit TokenBuckets(std::size_t max_keys = 100'000) : max_keys_(max_keys) {}

    /// Takes one token from `key`'s bucket (filled at `rate` per second, holding at most `burst`, full when new);
    /// nothing if it had one, otherwise how long until it will.
    [[nodiscard]] std::optional<std::chrono::milliseconds> try_acquire(std::string_view key, double rate, double burst);

    [[nodiscard]] std::size_t size() const;

  private:
    struct Bucket {
        double level;
        std::chrono::steady_clock::time_point updated;
    };
    struct Hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view key) const noexcept { return std::hash<std::string_view>{}(key); }
    };

    void forget_least_recent();

    std::size_t max_keys_;
    mutable std::mutex mutex_;
    std::unordered_map<std::string, Bucket, Hash, std::equal_to<>> buckets_;
};

/// Lets one log line through per interval and counts those held back, for a condition that can repeat thousands
/// of times a second (a flood of refused requests, an accept loop out of file descriptors): the log says it once,
/// with how often, instead of drowning. Thread-safe.
class LogThrottle {
  public:
    explicit LogThrottle(std::chrono::steady_clock::duration interval = std::chrono::seconds(10))
        : interval_(interval) {}

    /// Whether to log this occurrence; if so, how many were held back since the last line logged.
    [[nodiscard]] std::optional<std::uint64_t> admit();

    /// " (N more since the last report)" for a line admit() let through, or nothing if none were held back.
    [[nodiscard]] static std::string held_back_note(std::uint64_t held_back);

  private:
    std::chrono::steady_clock::duration interval_;
    std::mutex mutex_;
    std::optional<std::chrono::steady_clock::time_point> last_;
    std::uint64_t held_back_ = 0;
};

}  // namespace conveyor
