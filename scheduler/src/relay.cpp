#include "relay.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "conveyor/core/job.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::string_view kChannel = "conveyor_scheduled_jobs";
// Due rows that another relay holds are usually published within its round trip to the broker: look again soon,
// then less and less often while they stay held (a relay waiting on a blocked broker).
constexpr auto kContendedRetry = std::chrono::milliseconds(25);
constexpr auto kFailureBackoff = std::chrono::seconds(1);
// A job the broker keeps refusing (nacks, or a connection that drops whenever it is published) backs off from 1 s
// to 5 min per attempt, so the jobs due after it go first; after this many attempts, about four hours, it is failed.
constexpr int kMaxPublishAttempts = 50;

constexpr std::string_view kClaimDue =
    "SELECT id, type, payload::text, correlation_id, traceparent, "
    "(extract(epoch FROM greatest(run_at, created_at)) * 1000)::bigint, priority, coalesce(unique_key, ''), "
    "unique_for, coalesce(batch_id, '') "
    "FROM conveyor.scheduled_jobs WHERE state = 'pending' AND run_at <= now() "
    "AND (next_attempt_at IS NULL OR next_attempt_at <= now()) "
    "ORDER BY run_at LIMIT $1 FOR UPDATE SKIP LOCKED";

std::int64_t epoch_millis() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

/// Due rows as the wire contract's messages: the job id as message_id, and enqueued-at when it fell due, so
/// queue-wait metrics measure the wait from then, not from when it was scheduled.
std::vector<OutboxMessage> read_due(const pg::Result& rows) {
    std::vector<OutboxMessage> jobs;
    jobs.reserve(static_cast<std::size_t>(rows.rows()));
    for (int row = 0; row < rows.rows(); ++row) {
        OutboxMessage job;
        job.message_id = rows.text(row, 0);
        job.exchange = topology::kJobsExchange;
        job.routing_key = rows.text(row, 1);
        job.body = rows.text(row, 2);
        job.correlation_id = rows.text(row, 3);
        job.traceparent = rows.text(row, 4);
        job.enqueued_at_ms = rows.integer(row, 5);
        job.priority = rows.text(row, 6);
        job.unique_key = rows.text(row, 7);
        job.unique_for = rows.integer(row, 8);
        job.batch = rows.text(row, 9);
        jobs.push_back(std::move(job));
    }
    return jobs;
}

std::string_view or_dash(std::string_view text) {
    return text.empty() ? std::string_view("-") : text;
}

}  // namespace

Relay::Relay(const asio::any_io_executor& executor, pg::Pool& pool, const pg::Settings& listener_settings,
             amqp::Connection& publisher, SchedulerMetrics& metrics, RelaySettings settings)
    : pool_(pool),
      listener_(executor, listener_settings),
      publisher_(publisher),
      metrics_(metrics),
      settings_(settings) {}

asio::awaitable<Relay::Batch> Relay::publish_due() {
    Batch batch;
    if (!publisher_.connected() || publisher_.blocked()) {
        // Claimed rows stay locked while they wait: leave them to a relay whose broker takes publishes.
        batch.transient_failures = 1;
        co_return batch;
    }
    auto transaction = co_await pool_.begin();
    const auto rows = co_await transaction.query(kClaimDue, static_cast<std::int64_t>(settings_.batch));
    const auto jobs = read_due(rows);
    if (jobs.empty()) {
        co_await transaction.commit();
        co_return batch;
    }
    std::vector<amqp::Message> messages;
    messages.reserve(jobs.size());
    for (const auto& job : jobs) {
        messages.push_back(outbox_to_message(job));
    }
    const auto errors = co_await amqp::publish_all(publisher_, std::move(messages), settings_.publish_timeout);

    const auto confirmed_ms = epoch_millis();
    std::vector<std::string_view> published;
    std::vector<std::string_view> unroutable;
    std::vector<std::string_view> refused;
    std::vector<std::string> refusals;
    std::string first_failure;
    for (std::size_t i = 0; i < jobs.size(); ++i) {
        const auto& job = jobs[i];
        if (!errors[i]) {
            published.push_back(job.message_id);
            metrics_.relay_latency.Observe(
                static_cast<double>(std::max<std::int64_t>(confirmed_ms - job.enqueued_at_ms, 0)) / 1000.0);
        } else if (errors[i] == amqp::Errc::unroutable) {
            unroutable.push_back(job.message_id);
            spdlog::error(
                "relay: job {} (type {}, correlation {}) is unroutable: no queue is bound for {} on {}; "
                "marked failed",
                job.message_id, job.routing_key, or_dash(job.correlation_id), job.routing_key, topology::kJobsExchange);
        } else {
            refused.push_back(job.message_id);
            refusals.push_back(errors[i].message());
            if (batch.transient_failures++ == 0) {
                first_failure = fmt::format("job {} (type {}, correlation {}): {}", job.message_id, job.routing_key,
                                            or_dash(job.correlation_id), errors[i].message());
            }
        }
    }
    if (!published.empty()) {
        const auto ids = pg::text_array(published);
        co_await transaction.query(
            "UPDATE conveyor.scheduled_jobs SET state = 'published', finished_at = clock_timestamp() "
            "WHERE id = ANY($1::uuid[])",
            ids);
    }
    if (!unroutable.empty()) {
        const auto ids = pg::text_array(unroutable);
        co_await transaction.query(
            "UPDATE conveyor.scheduled_jobs SET state = 'failed', finished_at = clock_timestamp(), "
            "error = 'unroutable: no queue is bound for ' || type || ' on conveyor.jobs' WHERE id = ANY($1::uuid[])",
            ids);
    }
    if (!refused.empty()) {
        const auto ids = pg::text_array(refused);
        const auto reasons = pg::text_array(refusals);
        const auto given_up = co_await transaction.query(
            "UPDATE conveyor.scheduled_jobs AS jobs SET attempts = jobs.attempts + 1, "
            "next_attempt_at = now() + least(interval '1 second' * power(2, jobs.attempts), interval '5 minutes'), "
            "error = 'publish failed: ' || r.reason, "
            "state = CASE WHEN jobs.attempts + 1 >= $3 THEN 'failed' ELSE jobs.state END, "
            "finished_at = CASE WHEN jobs.attempts + 1 >= $3 THEN clock_timestamp() END "
            "FROM unnest($1::uuid[], $2::text[]) AS r(id, reason) WHERE jobs.id = r.id "
            "RETURNING jobs.id, jobs.type, jobs.correlation_id, jobs.state",
            ids, reasons, kMaxPublishAttempts);
        for (int row = 0; row < given_up.rows(); ++row) {
            if (given_up.text(row, 3) == "failed") {
                spdlog::error("relay: job {} (type {}, correlation {}) was refused {} times; marked failed",
                              given_up.text(row, 0), given_up.text(row, 1),
                              given_up.is_null(row, 2) ? "-" : given_up.text(row, 2), kMaxPublishAttempts);
            }
        }
    }
    co_await transaction.commit();
    metrics_.relay_published.Increment(static_cast<double>(published.size()));
    metrics_.relay_unroutable.Increment(static_cast<double>(unroutable.size()));
    if (batch.transient_failures > 0) {
        spdlog::warn("relay: {} of {} jobs not published; they are tried again with backoff; first: {}",
                     batch.transient_failures, jobs.size(), first_failure);
    }
    batch.settled = published.size() + unroutable.size();
    co_return batch;
}

asio::awaitable<std::chrono::milliseconds> Relay::time_until_next_due() {
    const auto next = co_await pool_.query(
        "SELECT greatest(0, (extract(epoch FROM (min(greatest(run_at, coalesce(next_attempt_at, run_at))) "
        "- clock_timestamp())) * 1000)::bigint) FROM conveyor.scheduled_jobs WHERE state = 'pending'");
    if (next.is_null(0, 0)) {
        co_return settings_.poll_interval;
    }
    co_return std::min(std::chrono::milliseconds(next.integer(0, 0)), settings_.poll_interval);
}

asio::awaitable<void> Relay::wait_for_work(std::chrono::milliseconds longest) {
    const auto deadline = Clock::now() + longest;
    if (!listening_) {
        std::string failure;
        try {
            co_await listener_.connect();
            const auto listen = fmt::format("LISTEN {}", kChannel);
            co_await listener_.query(listen);
            listening_ = true;
            spdlog::info("relay: listening for new jobs on channel {}", kChannel);
        } catch (const std::exception& e) {
            failure = e.what();
        }
        if (failure.empty()) {
            listener_warned_ = false;
        } else if (!listener_warned_) {
            listener_warned_ = true;
            spdlog::warn("relay: cannot LISTEN ({}); looking for due jobs every {} ms until it can", failure,
                         settings_.poll_interval.count());
        }
    }
    if (listening_) {
        std::string failure;
        try {
            co_await listener_.notifications(deadline);
            co_return;
        } catch (const std::exception& e) {
            failure = e.what();
        }
        listening_ = false;
        listener_.disconnect();
        spdlog::warn("relay: lost the LISTEN connection ({}); reconnecting", failure);
    }
    asio::steady_timer timer(co_await asio::this_coro::executor, deadline);
    co_await timer.async_wait(asio::use_awaitable);
}

asio::awaitable<void> Relay::run(const std::atomic<bool>& stopping) {
    asio::steady_timer backoff(co_await asio::this_coro::executor);
    std::string last_failure;
    auto contended_wait = kContendedRetry;
    while (!stopping) {
        std::string failure;
        try {
            const auto batch = co_await publish_due();
            if (batch.settled >= settings_.batch) {
                contended_wait = kContendedRetry;
                continue;
            }
            std::chrono::milliseconds wait = kFailureBackoff;
            if (batch.transient_failures == 0) {
                wait = co_await time_until_next_due();
            }
            if (wait.count() == 0 && batch.settled == 0) {
                wait = contended_wait;
                contended_wait = std::min<std::chrono::milliseconds>(contended_wait * 2, kFailureBackoff);
            } else {
                contended_wait = kContendedRetry;
            }
            co_await wait_for_work(wait);
            if (!last_failure.empty()) {
                spdlog::info("relay: working again");
                last_failure.clear();
            }
        } catch (const std::exception& e) {
            failure = e.what();
        }
        if (!failure.empty()) {
            if (failure != last_failure) {
                spdlog::error("relay: {}; trying again every {} ms", failure,
                              std::chrono::milliseconds(kFailureBackoff).count());
                last_failure = failure;
            }
            backoff.expires_after(kFailureBackoff);
            co_await backoff.async_wait(asio::use_awaitable);
        }
    }
    listener_.disconnect();
}

}  // namespace conveyor::scheduler
