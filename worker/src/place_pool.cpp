#include "place_pool.hpp"

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace conveyor::worker {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

bool PlacePool::take_free(ConcurrencyPlace& place) {
    const std::lock_guard lock(mutex_);
    const auto entry = keys_.find(PlaceKey{place.type, place.key});
    if (entry == keys_.end() || entry->second.free.empty() || contended_.contains(entry->first)) {
        return false;
    }
    auto& state = entry->second;
    // The most recently freed: the ones left over run out their linger and go back to the fleet.
    place.label = std::move(state.free.back().label);
    state.free.pop_back();
    state.limit = place.limit;
    ++state.in_use;
    return true;
}

void PlacePool::add(const ConcurrencyPlace& place) {
    const std::lock_guard lock(mutex_);
    auto& state = keys_[PlaceKey{place.type, place.key}];
    state.limit = place.limit;
    ++state.in_use;
}

asio::awaitable<bool> PlacePool::wait_for_place(ConcurrencyPlace& place, std::chrono::milliseconds patience) {
    const PlaceKey key{place.type, place.key};
    std::shared_ptr<Waiter> waiter;
    {
        const std::lock_guard lock(mutex_);
        waiter = enlist(place);
    }
    if (!waiter) {
        co_return false;
    }
    // Cancelled mid-wait, the job leaves the line; a place handed to it meanwhile stays free here.
    struct Leaving {
        PlacePool& pool;
        const PlaceKey& key;
        std::shared_ptr<Waiter>& waiter;
        bool done = false;
        ~Leaving() {
            if (done) {
                return;
            }
            const std::lock_guard lock(pool.mutex_);
            if (pool.leave(key, waiter)) {
                auto& state = pool.keys_[key];
                --state.in_use;
                state.free.push_back({std::move(*waiter->label), Clock::now()});
            }
        }
    } leaving{*this, key, waiter};
    auto handed = [this, &waiter] {
        const std::lock_guard lock(mutex_);
        return waiter->label.has_value() || stopped_;
    };
    auto handover = handed_over_.wait(handed);
    asio::steady_timer timer(co_await asio::this_coro::executor, patience);
    auto out_of_patience = timer.async_wait(asio::as_tuple(asio::use_awaitable));
    co_await (std::move(handover) || std::move(out_of_patience));
    leaving.done = true;
    const std::lock_guard lock(mutex_);
    if (!leave(key, waiter)) {
        co_return false;
    }
    place.label = std::move(*waiter->label);
    co_return true;
}

std::shared_ptr<PlacePool::Waiter> PlacePool::enlist(const ConcurrencyPlace& place) {
    const auto entry = keys_.find(PlaceKey{place.type, place.key});
    if (stopped_ || entry == keys_.end()) {
        return nullptr;
    }
    auto& state = entry->second;
    if (contended_.contains(entry->first) || state.in_use == 0 || state.waiters.size() >= place.limit ||
        waiters_ >= settings_.max_waiters) {
        return nullptr;
    }
    auto waiter = std::make_shared<Waiter>();
    if (!state.free.empty()) {
        // Freed since the job looked.
        waiter->label = std::move(state.free.back().label);
        state.free.pop_back();
        ++state.in_use;
        return waiter;
    }
    state.waiters.push_back(waiter);
    ++waiters_;
    return waiter;
}

bool PlacePool::leave(const PlaceKey& key, const std::shared_ptr<Waiter>& waiter) {
    const auto entry = keys_.find(key);
    if (entry == keys_.end()) {
        return waiter->label.has_value();
    }
    auto& waiters = entry->second.waiters;
    const auto found = std::find(waiters.begin(), waiters.end(), waiter);
    if (found != waiters.end()) {
        waiters.erase(found);
        --waiters_;
    }
    if (waiter->label) {
        return true;
    }
    forget_if_unused(entry);
    return false;
}

std::optional<ConcurrencyPlace> PlacePool::put_back(ConcurrencyPlace place) {
    {
        const std::lock_guard lock(mutex_);
        const auto entry = keys_.find(PlaceKey{place.type, place.key});
        if (entry == keys_.end()) {
            return place;
        }
        auto& state = entry->second;
        if (state.waiters.empty()) {
            --state.in_use;
            if (stopped_ || contended_.contains(entry->first)) {
                forget_if_unused(entry);
                return place;
            }
            state.free.push_back({std::move(place.label), Clock::now()});
            return std::nullopt;
        }
        state.waiters.front()->label = std::move(place.label);
        state.waiters.pop_front();
        --waiters_;
    }
    handed_over_.notify_all();
    return std::nullopt;
}

std::vector<ConcurrencyPlace> PlacePool::set_contended(const std::set<PlaceKey>& contended) {
    std::vector<ConcurrencyPlace> given_up;
    const std::lock_guard lock(mutex_);
    contended_ = contended;
    for (auto entry = keys_.begin(); entry != keys_.end();) {
        const auto next = std::next(entry);
        auto& state = entry->second;
        if (contended_.contains(entry->first)) {
            for (auto& free : state.free) {
                given_up.push_back({entry->first.type, entry->first.key, state.limit, std::move(free.label)});
            }
            state.free.clear();
            forget_if_unused(entry);
        }
        entry = next;
    }
    return given_up;
}

std::vector<ConcurrencyPlace> PlacePool::contend(const PlaceKey& key) {
    std::vector<ConcurrencyPlace> given_up;
    const std::lock_guard lock(mutex_);
    contended_.insert(key);
    const auto entry = keys_.find(key);
    if (entry == keys_.end()) {
        return given_up;
    }
    for (auto& free : entry->second.free) {
        given_up.push_back({key.type, key.key, entry->second.limit, std::move(free.label)});
    }
    entry->second.free.clear();
    forget_if_unused(entry);
    return given_up;
}

std::vector<ConcurrencyPlace> PlacePool::take_unused(Clock::time_point now, bool everything) {
    std::vector<ConcurrencyPlace> unused;
    const std::lock_guard lock(mutex_);
    for (auto entry = keys_.begin(); entry != keys_.end();) {
        const auto next = std::next(entry);
        auto& free = entry->second.free;
        while (!free.empty() && (everything || free.front().since + settings_.linger <= now)) {
            unused.push_back({entry->first.type, entry->first.key, entry->second.limit, std::move(free.front().label)});
            free.pop_front();
        }
        forget_if_unused(entry);
        entry = next;
    }
    return unused;
}

std::vector<PlaceKey> PlacePool::keys() const {
    std::vector<PlaceKey> held;
    const std::lock_guard lock(mutex_);
    held.reserve(keys_.size());
    for (const auto& [key, state] : keys_) {
        held.push_back(key);
    }
    return held;
}

void PlacePool::stop() noexcept {
    {
        const std::lock_guard lock(mutex_);
        stopped_ = true;
    }
    handed_over_.notify_all();
}

void PlacePool::forget_if_unused(std::map<PlaceKey, KeyState>::iterator entry) {
    const auto& state = entry->second;
    if (state.in_use == 0 && state.free.empty() && state.waiters.empty()) {
        keys_.erase(entry);
    }
}

}  // namespace conveyor::worker
