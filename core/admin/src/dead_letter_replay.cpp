#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "conveyor/admin/dead_letters.hpp"
#include "conveyor/core/envelope.hpp"
#include "conveyor/core/header_json.hpp"
#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::dead_letters {
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

// Dead letters claimed, published and marked per transaction: a crash repeats at most this many (with their
// original job ids, which the receiving jobs' inboxes absorb).
constexpr std::int64_t kChunk = 100;
constexpr auto kCanaryPoll = std::chrono::milliseconds(500);
// After the first canary fails, how long the others get to report: the verdict then says how many failed rather
// than how many had failed by the time the first one did.
constexpr auto kCanarySettle = std::chrono::seconds(3);
/// The original headers without the failure's: a replay starts the job afresh.
amqp::Headers replay_headers(std::string_view json) {
    auto headers = amqp::headers_from_json(json);
    job_headers::strip_failure(headers);
    return headers;
}

/// A claimed row (see claim()) as the message to publish.
amqp::Message replay_message(const pg::Result& rows, int row, const ReplayRequest& request) {
    amqp::Message message;
    message.exchange = topology::kJobsExchange;
    message.routing_key = request.to_type.empty() ? std::string(rows.text(row, 2)) : request.to_type;
    message.body = decode_body(rows.text(row, 6));
    auto& properties = message.properties;
    properties.content_type = "application/json";
    properties.message_id = rows.text(row, 1);
    properties.correlation_id = rows.is_null(row, 4) ? std::string() : std::string(rows.text(row, 4));
    properties.headers = replay_headers(rows.text(row, 5));
    const auto now = std::chrono::system_clock::now();
    set_enqueued_at(properties, std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count());
    job_headers::stamp_replay(properties.headers, now, request.by, rows.text(row, 0));
    return message;
}

std::string publish_failure(const pg::Result& rows, int row, boost::system::error_code error) {
    return fmt::format("dead letter {} (job {}, type {}): {}", rows.text(row, 0), rows.text(row, 1), rows.text(row, 2),
                       error.message());
}

/// Publishes the chunk's messages one by one, `rate` per second; `next_send` carries the pace from chunk to chunk.
asio::awaitable<std::vector<std::string>> publish_paced(amqp::Connection& publisher, const pg::Result& rows,
                                                        const ReplayRequest& request, const ReplayHooks& hooks,
                                                        Clock::time_point& next_send, ReplayResult& result) {
    asio::steady_timer pacing(co_await asio::this_coro::executor);
    const auto interval =
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / request.rate));
    std::vector<std::string> published;
    for (int row = 0; row < rows.rows() && !hooks.stop_requested(); ++row) {
        pacing.expires_at(next_send);
        co_await pacing.async_wait(asio::as_tuple(asio::use_awaitable));
        // From the later of the planned and the actual send: a pause (canaries, a slow broker) is not made up for
        // with a burst.
        next_send = std::max(next_send, Clock::now()) + interval;
        auto message = replay_message(rows, row, request);  // named: no temporaries inside co_await for g++ 12
        auto [error] = co_await publisher.async_publish(std::move(message), request.publish_timeout,
                                                        asio::as_tuple(asio::use_awaitable));
        if (error) {
            result.failure = publish_failure(rows, row, error);
            break;
        }
        published.emplace_back(rows.text(row, 0));
    }
    co_return published;
}

/// Publishes the whole chunk at once: one round of confirms, not one per message.
asio::awaitable<std::vector<std::string>> publish_all(amqp::Connection& publisher, const pg::Result& rows,
                                                      const ReplayRequest& request, ReplayResult& result) {
    std::vector<amqp::Message> messages;
    messages.reserve(static_cast<std::size_t>(rows.rows()));
    for (int row = 0; row < rows.rows(); ++row) {
        messages.push_back(replay_message(rows, row, request));
    }
    const auto errors = co_await amqp::publish_all(publisher, std::move(messages), request.publish_timeout);
    std::vector<std::string> published;
    for (int row = 0; row < rows.rows(); ++row) {
        const auto& error = errors[static_cast<std::size_t>(row)];
        if (!error) {
            published.emplace_back(rows.text(row, 0));
        } else if (result.failure.empty()) {
            result.failure = publish_failure(rows, row, error);
        }
    }
    co_return published;
}

/// Waits for the canaries' outcome; an empty string when every one succeeded.
asio::awaitable<std::string> canary_verdict(pg::Pool& pool, const std::vector<std::string>& job_ids,
                                            const std::string& since, const ReplayRequest& request,
                                            const ReplayHooks& hooks) {
    asio::steady_timer poll(co_await asio::this_coro::executor);
    const auto wanted = static_cast<std::int64_t>(job_ids.size());
    const auto deadline = Clock::now() + request.canary_timeout;
    auto settle_until = deadline;
    Outcomes outcome;
    while (!hooks.stop_requested()) {
        outcome = co_await outcomes(pool, job_ids, since);
        if (outcome.failed > 0 && settle_until == deadline) {
            settle_until = std::min(deadline, Clock::now() + kCanarySettle);
        }
        if (outcome.failed + outcome.succeeded >= wanted || Clock::now() >= settle_until) {
            break;
        }
        poll.expires_after(kCanaryPoll);
        co_await poll.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    std::string verdict;
    if (outcome.failed > 0) {
        verdict = fmt::format("{} of {} canaries failed again ({})", outcome.failed, wanted, outcome.example_error);
        if (const auto unfinished = wanted - outcome.failed - outcome.succeeded; unfinished > 0) {
            verdict += fmt::format(", {} not finished", unfinished);
        }
    } else if (outcome.succeeded < wanted && !hooks.stop_requested()) {
        verdict = fmt::format(
            "only {} of {} canaries finished within {} s (a job type that runs no database transaction leaves no "
            "trace to check)",
            outcome.succeeded, wanted, request.canary_timeout.count() / 1000);
    }
    co_return verdict;
}

}  // namespace

asio::awaitable<std::int64_t> count_replayable(pg::Pool& pool, const ReplayRequest& request) {
    auto filter = request.filter;
    filter.state = "dead";
    const auto matching = co_await count(pool, filter);
    co_return request.limit > 0 ? std::min(matching, request.limit) : matching;
}

asio::awaitable<ReplayResult> replay(pg::Pool& pool, amqp::Connection& publisher, const ReplayRequest& request,
                                     const ReplayHooks& hooks) {
    auto filter = request.filter;
    filter.state = "dead";
    ReplayResult result;
    result.matched = co_await count_replayable(pool, request);
    if (result.matched == 0) {
        co_return result;
    }
    const auto audit_entry = co_await open_replay_entry(pool, filter, request.by, request.to_type, result.matched);
    const auto clock = co_await pool.query("SELECT now()::text");
    const std::string since(clock.text(0, 0));
    auto next_send = Clock::now();
    std::int64_t last_id = 0;
    bool canaries_pending = request.canary > 0;
    while (result.replayed < result.matched && result.failure.empty() && !hooks.stop_requested()) {
        const auto wanted = std::min(canaries_pending ? request.canary : kChunk, result.matched - result.replayed);
        auto transaction = co_await pool.begin();
        const auto rows = co_await claim(transaction, filter, last_id, wanted);
        if (rows.rows() == 0) {
            co_await transaction.commit();
            break;
        }
        last_id = rows.integer(rows.rows() - 1, 0);
        std::vector<std::string> published;
        if (request.rate > 0) {
            published = co_await publish_paced(publisher, rows, request, hooks, next_send, result);
        } else {
            published = co_await publish_all(publisher, rows, request, result);
        }
        co_await mark_replayed(transaction, published, request.by, request.to_type, audit_entry);
        co_await transaction.commit();
        result.replayed += static_cast<std::int64_t>(published.size());
        hooks.on_progress(result);
        if (canaries_pending && result.failure.empty() && !published.empty()) {
            canaries_pending = false;
            std::vector<std::string> job_ids;
            for (std::size_t row = 0; row < published.size(); ++row) {
                job_ids.emplace_back(rows.text(static_cast<int>(row), 1));
            }
            hooks.on_note(fmt::format("{} canaries replayed; waiting up to {} s for their outcome", job_ids.size(),
                                      request.canary_timeout.count() / 1000));
            result.failure = co_await canary_verdict(pool, job_ids, since, request, hooks);
            if (result.failure.empty() && !hooks.stop_requested()) {
                hooks.on_note(fmt::format("all {} canaries succeeded; replaying the rest", job_ids.size()));
            }
        }
    }
    result.stopped = hooks.stop_requested();
    const auto why_ended = result.stopped && result.failure.empty() ? std::string("stopped") : result.failure;
    co_await close_replay_entry(pool, audit_entry, result.replayed, why_ended);
    co_return result;
}

}  // namespace conveyor::dead_letters
