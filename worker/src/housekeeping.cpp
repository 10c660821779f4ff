#include "housekeeping.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "conveyor/core/task_group.hpp"
#include "conveyor/core/unique_keys.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kSweepBatch = 500;
constexpr int kPruneBatch = 10'000;
constexpr auto kCleanupInterval = std::chrono::milliseconds(100);

/// "{1,2,3}": a bigint[] parameter, so a batch is deleted by one parameterised statement.
std::string id_array(const std::vector<std::int64_t>& ids) {
    return fmt::format("{{{}}}", fmt::join(ids, ","));
}

/// Deletes in batches so a large backlog never holds long locks or one huge transaction.
asio::awaitable<std::int64_t> prune(pg::Pool& pool, std::string_view sql, std::chrono::milliseconds retention) {
    std::int64_t total = 0;
    while (true) {
        const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(retention).count();
        const auto result = co_await pool.query(sql, seconds, kPruneBatch);
        const auto deleted = result.affected();
        total += deleted;
        if (deleted < kPruneBatch) {
            co_return total;
        }
    }
}

/// Deletes inbox rows and execution records older than the retention, logging what went.
asio::awaitable<void> prune_old_records(pg::Pool& pool, std::chrono::milliseconds retention) {
    const auto inbox = co_await prune(pool,
                                      "DELETE FROM conveyor.inbox WHERE message_id IN (SELECT message_id FROM "
                                      "conveyor.inbox WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2)",
                                      retention);
    const auto executions = co_await prune(pool,
                                           "DELETE FROM conveyor.job_executions WHERE job_id IN (SELECT job_id FROM "
                                           "conveyor.job_executions WHERE last_started_at < now() - "
                                           "make_interval(secs => $1) LIMIT $2)",
                                           retention);
    const auto unique = co_await unique_keys::delete_expired(pool);
    if (inbox + executions + unique > 0) {
        spdlog::info("pruned {} inbox rows and {} execution records older than {} h, and {} expired unique keys", inbox,
                     executions, std::chrono::duration_cast<std::chrono::hours>(retention).count(), unique);
    }
}

}  // namespace

bool DatabaseHealth::set_up() {
    const bool changed = !ok_.exchange(true);
    if (changed) {
        changed_.notify_all();
    }
    return changed;
}

asio::awaitable<bool> DatabaseHealth::wait_until_usable(const std::atomic<bool>& give_up) {
    const auto usable_or_given_up = [&] { return ok_ || give_up; };
    co_await changed_.wait(usable_or_given_up);
    co_return ok_.load();
}

bool DatabaseHealth::set_down(std::string why) {
    {
        std::lock_guard lock(mutex_);
        why_down_ = std::move(why);
    }
    return ok_.exchange(false);
}

void DatabaseHealth::lost(const std::string& why) {
    if (set_down(why)) {
        spdlog::error("database not usable: {}; jobs that need it wait", why);
    }
}

std::string DatabaseHealth::why_down() const {
    std::lock_guard lock(mutex_);
    return why_down_;
}

asio::awaitable<std::size_t> OutboxRelay::publish(const std::vector<OutboxMessage>& rows) {
    std::vector<std::int64_t> published;
    for (const auto& row : rows) {
        auto message = outbox_to_message(row);  // named: no temporaries inside co_await for g++ 12
        auto [error] = co_await publisher_.async_publish(std::move(message), asio::as_tuple(asio::use_awaitable));
        if (error) {
            spdlog::warn("outbox: could not publish {} ({}): {}; the sweeper will retry", row.message_id,
                         row.routing_key, error.message());
            continue;
        }
        published.push_back(row.row_id);
    }
    const std::lock_guard lock(published_mutex_);
    published_.insert(published_.end(), published.begin(), published.end());
    co_return published.size();
}

asio::awaitable<std::size_t> OutboxRelay::delete_published() {
    std::vector<std::int64_t> batch;
    {
        const std::lock_guard lock(published_mutex_);
        batch.swap(published_);
    }
    if (batch.empty()) {
        co_return 0;
    }
    const auto ids = id_array(batch);
    std::string failure;
    try {
        co_await pool_.query("DELETE FROM conveyor.outbox WHERE id = ANY($1::bigint[])", ids);
    } catch (const std::exception& e) {
        failure = e.what();
    }
    if (!failure.empty()) {
        const std::lock_guard lock(published_mutex_);
        published_.insert(published_.end(), batch.begin(), batch.end());
        throw std::runtime_error(fmt::format("could not delete {} published outbox rows: {}", batch.size(), failure));
    }
    co_return batch.size();
}

asio::awaitable<std::size_t> OutboxRelay::sweep(std::chrono::milliseconds min_age) {
    std::size_t total = 0;
    if (!publisher_.connected()) {
        co_return total;  // rows are locked while they are published: do not hold them waiting for the broker
    }
    while (true) {
        auto transaction = co_await pool_.begin();
        const auto rows = co_await transaction.query(
            "SELECT id, message_id, exchange, routing_key, coalesce(correlation_id, ''), coalesce(traceparent, ''), "
            "body, (extract(epoch FROM created_at) * 1000)::bigint FROM conveyor.outbox "
            "WHERE created_at < now() - make_interval(secs => $1) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            static_cast<double>(min_age.count()) / 1000.0, kSweepBatch);
        std::vector<OutboxMessage> batch;
        batch.reserve(static_cast<std::size_t>(rows.rows()));
        for (int i = 0; i < rows.rows(); ++i) {
            auto& row = batch.emplace_back();
            row.row_id = rows.integer(i, 0);
            row.message_id = rows.text(i, 1);
            row.exchange = rows.text(i, 2);
            row.routing_key = rows.text(i, 3);
            row.correlation_id = rows.text(i, 4);
            row.traceparent = rows.text(i, 5);
            row.body = rows.text(i, 6);
            row.enqueued_at_ms = rows.integer(i, 7);
        }
        std::vector<std::int64_t> published;
        bool broker_gone = false;
        for (const auto& row : batch) {
            auto message = outbox_to_message(row);
            auto [error] = co_await publisher_.async_publish(std::move(message), asio::as_tuple(asio::use_awaitable));
            if (!error) {
                published.push_back(row.row_id);
                continue;
            }
            // A row the broker refuses (nothing bound for its type) must not hold up the rows behind it; it stays,
            // reported on every sweep. A lost connection ends the sweep.
            spdlog::warn("outbox sweep: could not publish {} ({}): {}", row.message_id, row.routing_key,
                         error.message());
            if (error != amqp::Errc::unroutable && error != amqp::Errc::nacked) {
                broker_gone = true;
                break;
            }
        }
        if (!published.empty()) {
            const auto ids = id_array(published);
            co_await transaction.query("DELETE FROM conveyor.outbox WHERE id = ANY($1::bigint[])", ids);
        }
        co_await transaction.commit();
        total += published.size();
        if (batch.size() < static_cast<std::size_t>(kSweepBatch) || broker_gone) {
            co_return total;
        }
    }
}

asio::awaitable<void> run_database_probe(pg::Pool& pool, std::chrono::milliseconds interval,
                                         prometheus::Gauge& outbox_pending, DatabaseHealth& database) {
    bool probing = true;
    while (probing) {
        std::string failure;
        try {
            const auto backlog = co_await pool.query("SELECT count(*) FROM conveyor.outbox");
            outbox_pending.Set(static_cast<double>(backlog.integer(0, 0)));
        } catch (const std::exception& e) {
            failure = e.what();
        }
        const auto state = co_await asio::this_coro::cancellation_state;
        if (cancelled(state)) {
            break;  // a failure now is the stop's, not the database's
        }
        if (failure.empty() && database.set_up()) {
            spdlog::info("database usable");
        }
        if (!failure.empty() && database.set_down(failure)) {
            spdlog::error("database not usable: {}", failure);
        }
        probing = co_await wait_until(Clock::now() + interval);
    }
}

asio::awaitable<void> run_housekeeping(pg::Pool& pool, OutboxRelay& relay, HousekeepingSettings settings,
                                       const DatabaseHealth& database) {
    auto next_sweep = Clock::now() + settings.outbox_sweep_interval;
    auto next_prune = Clock::now();
    bool running = true;
    while (running) {
        const auto now = Clock::now();
        std::string failure;
        try {
            // While the database is down the probe notices when it is back; until then there is nothing to do.
            if (database.ok() && now >= next_sweep) {
                next_sweep = now + settings.outbox_sweep_interval;
                // Rows younger than a sweep interval are most likely still being published by their job.
                if (const auto swept = co_await relay.sweep(settings.outbox_sweep_interval); swept > 0) {
                    spdlog::info("outbox sweep published {} messages left behind", swept);
                }
            }
            if (now >= next_prune) {
                next_prune = now + settings.prune_interval;
                co_await prune_old_records(pool, settings.inbox_retention);
            }
        } catch (const std::exception& e) {
            failure = e.what();
        }
        const auto state = co_await asio::this_coro::cancellation_state;
        if (!failure.empty() && !cancelled(state)) {
            spdlog::warn("housekeeping: {}; trying again later", failure);
        }
        running = co_await wait_until(std::min(next_sweep, next_prune));
    }
}

asio::awaitable<void> run_outbox_cleanup(OutboxRelay& relay, const DatabaseHealth& database) {
    // After the stop, once more: the last jobs' rows, left here, would be published again by a sweeper.
    bool last_round = false;
    while (true) {
        std::string failure;
        if (database.ok() || last_round) {
            try {
                co_await relay.delete_published();
            } catch (const std::exception& e) {
                failure = e.what();
            }
        }
        const auto state = co_await asio::this_coro::cancellation_state;
        if (!failure.empty() && !cancelled(state)) {
            spdlog::warn(
                "outbox: {}; trying again (a sweeper may publish them again meanwhile: duplicates the inbox "
                "absorbs)",
                failure);
        }
        if (last_round) {
            co_return;
        }
        // Once cancelled, awaiting anything throws: a cancellation that interrupted the delete goes to the last round.
        bool stopped = cancelled(state);
        if (!stopped) {
            stopped = !co_await wait_until(Clock::now() + kCleanupInterval);
        }
        if (stopped) {
            co_await asio::this_coro::reset_cancellation_state();
            last_round = true;
        }
    }
}

}  // namespace conveyor::worker
