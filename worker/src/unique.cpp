#include "unique.hpp"

#include "conveyor/core/unique_keys.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;

asio::awaitable<std::optional<bool>> UniqueKeys::claim(const Envelope& envelope, const JobLogger& log) {
    if (envelope.unique_key.empty()) {
        co_return true;
    }
    while (true) {
        try {
            co_return co_await unique_keys::claim(pool_, envelope.type, envelope.unique_key, envelope.job_id);
        } catch (const pg::Error& e) {
            database_.lost(e.what());
        }
        log.debug("waiting for the database to check its unique key");
        const bool available = co_await database_.wait_until_usable(draining_);
        if (!available) {
            co_return std::nullopt;
        }
    }
}

asio::awaitable<void> UniqueKeys::after_attempt(const Envelope& envelope, End end, const JobLogger& log) {
    if (envelope.unique_key.empty() || end == End::retried) {
        co_return;
    }
    while (true) {
        try {
            if (end == End::cancelled) {
                co_await unique_keys::release(pool_, envelope.type, envelope.unique_key, envelope.job_id);
            } else {
                co_await unique_keys::hold_after_end(pool_, envelope.type, envelope.unique_key, envelope.job_id,
                                                     envelope.unique_for);
            }
            co_return;
        } catch (const pg::Error& e) {
            database_.lost(e.what());
        }
        const bool available = co_await database_.wait_until_usable(draining_);
        if (!available) {
            log.error(
                "its unique key '{}' stays held: the database is away and the worker is stopping; delete its "
                "row in conveyor.unique_keys to free it",
                envelope.unique_key);
            co_return;
        }
    }
}

}  // namespace conveyor::worker
