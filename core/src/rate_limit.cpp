#include "conveyor/core/rate_limit.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace conveyor {

std::optional<std::chrono::milliseconds> TokenBuckets::try_acquire(std::string_view key, double rate, double burst) {
    const auto now = std::chrono::steady_clock::now();
    const std::lock_guard lock(mutex_);
    auto found = buckets_.find(key);
    if (found == buckets_.end()) {
        if (buckets_.size() >= max_keys_) {
            forget_least_recent();
        }
        found = buckets_.emplace(std::string(key), Bucket{burst, now}).first;
    }
    auto& bucket = found->second;
    const double elapsed = std::chrono::duration<double>(now - bucket.updated).count();
    bucket.level = std::min(burst, bucket.level + elapsed * rate);
    bucket.updated = now;
    if (bucket.level >= 1.0) {
        bucket.level -= 1.0;
        return std::nullopt;
    }
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil((1.0 - bucket.level) / rate * 1000.0)));
}

std::size_t TokenBuckets::size() const {
    const std::lock_guard lock(mutex_);
    return buckets_.size();
}

void TokenBuckets::forget_least_recent() {
    std::vector<std::chrono::steady_clock::time_point> times;
    times.reserve(buckets_.size());
    for (const auto& [key, bucket] : buckets_) {
        times.push_back(bucket.updated);
    }
    auto median = times.begin() + static_cast<std::ptrdiff_t>(times.size() / 2);
    std::nth_element(times.begin(), median, times.end());
    const auto cutoff = *median;
    std::erase_if(buckets_, [&](const auto& entry) { return entry.second.updated <= cutoff; });
}

std::optional<std::uint64_t> LogThrottle::admit() {
    const auto now = std::chrono::steady_clock::now();
    const std::lock_guard lock(mutex_);
    if (last_ && now - *last_ < interval_) {
        ++held_back_;
        return std::nullopt;
    }
    last_ = now;
    return std::exchange(held_back_, 0);
}

std::string LogThrottle::held_back_note(std::uint64_t held_back) {
    return held_back == 0 ? std::string() : fmt::format(" ({} more since the last report)", held_back);
}

}  // namespace conveyor
