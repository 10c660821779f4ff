#include "unique.hpp"

#include "conveyor/core/unique_keys.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;

asio::awaitable<std::optional<bool>> UniqueKeys::claim(const Envelope& envelope, const JobLogger& log) {
    if (envelope.unique_key.empty()) {
        co_return true;
    }
    bool held = false;
    auto claim = [&]() -> asio::awaitable<void> {
        held = co_await unique_keys::claim(pool_, envelope.type, envelope.unique_key, envelope.job_id);
    };
    const bool checked = co_await database_.run_when_usable(claim, draining_, log);
    co_return checked ? std::optional(held) : std::nullopt;
}

asio::awaitable<void> UniqueKeys::after_attempt(const Envelope& envelope, End end, const JobLogger& log) {
    if (envelope.unique_key.empty() || end == End::retried) {
        co_return;
    }
    auto settle_key = [&]() -> asio::awaitable<void> {
        if (end == End::cancelled) {
            co_await unique_keys::release(pool_, envelope.type, envelope.unique_key, envelope.job_id);
        } else {
            co_await unique_keys::hold_after_end(pool_, envelope.type, envelope.unique_key, envelope.job_id,
                                                 envelope.unique_for);
        }
    };
    const bool settled = co_await database_.run_when_usable(settle_key, draining_, log);
    if (!settled) {
        log.error(
            "its unique key '{}' stays held: the database is away and the worker is stopping; delete its row in "
            "conveyor.unique_keys to free it",
            envelope.unique_key);
    }
}

}  // namespace conveyor::worker
