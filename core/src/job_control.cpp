#include "conveyor/core/job_control.hpp"

#include <simdjson.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include "conveyor/core/job_history.hpp"
#include "conveyor/core/scheduled_jobs.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::job_control {
namespace asio = boost::asio;

std::string encode(const Command& command) {
    return boost::json::serialize(boost::json::object{{"command", command.command}, {"job_id", command.job_id}});
}

std::optional<Command> decode(std::string_view body) {
    simdjson::dom::parser parser;
    simdjson::dom::element root;
    if (parser.parse(body.data(), body.size()).get(root) != simdjson::SUCCESS) {
        return std::nullopt;
    }
    std::string_view command;
    std::string_view job_id;
    if (root["command"].get(command) != simdjson::SUCCESS || command != "cancel" ||
        root["job_id"].get(job_id) != simdjson::SUCCESS || job_id.empty()) {
        return std::nullopt;
    }
    return Command{std::string(command), std::string(job_id)};
}

std::string_view name(CancelOutcome::Result result) noexcept {
    switch (result) {
        case CancelOutcome::Result::cancelled:
            return "cancelled";
        case CancelOutcome::Result::cancelling:
            return "cancelling";
        case CancelOutcome::Result::cancel_pending:
            return "cancel_pending";
        case CancelOutcome::Result::terminal:
            return "terminal";
    }
    return "cancel_pending";
}

asio::awaitable<CancelOutcome> request_cancel(pg::Pool& pool, std::string_view job_id, std::string_view by) {
    CancelOutcome outcome;
    const auto job = co_await job_history::find(pool, job_id);
    if (job) {
        outcome.state = job->state;
        if (job->state == "succeeded" || job->state == "dead_lettered" || job->state == "cancelled") {
            outcome.result = CancelOutcome::Result::terminal;
            co_return outcome;
        }
    }
    co_await pool.query(
        "INSERT INTO conveyor.job_cancellations (job_id, requested_by) VALUES ($1, $2) ON CONFLICT (job_id) DO NOTHING",
        job_id, by);
    if (job && job->state == "scheduled") {
        // Published meanwhile, it is a queued job: the tombstone stops it.
        const auto scheduled = co_await scheduled_jobs::cancel(pool, std::string(job_id));
        outcome.result = scheduled.result == scheduled_jobs::Cancel::cancelled ? CancelOutcome::Result::cancelled
                                                                               : CancelOutcome::Result::cancelling;
        co_return outcome;
    }
    outcome.result = job ? CancelOutcome::Result::cancelling : CancelOutcome::Result::cancel_pending;
    co_return outcome;
}

asio::awaitable<boost::system::error_code> broadcast(amqp::Connection& publisher, const Command& command) {
    amqp::Message message;
    message.exchange = std::string(topology::kControlExchange);
    message.body = encode(command);
    message.properties.content_type = "application/json";
    auto [error] = co_await publisher.async_publish(std::move(message), asio::as_tuple(asio::use_awaitable));
    co_return error;
}

asio::awaitable<Tombstones> tombstones_since(pg::Pool& pool, std::int64_t after) {
    const auto rows = co_await pool.query(
        "SELECT seq, job_id FROM conveyor.job_cancellations WHERE seq > $1 ORDER BY seq LIMIT 100000", after);
    Tombstones tombstones;
    tombstones.last_seq = after;
    for (int row = 0; row < rows.rows(); ++row) {
        tombstones.last_seq = rows.integer(row, 0);
        tombstones.job_ids.emplace_back(rows.text(row, 1));
    }
    co_return tombstones;
}

asio::awaitable<std::int64_t> prune(pg::Pool& pool, std::chrono::milliseconds retention) {
    const auto rows = co_await pool.query(
        "DELETE FROM conveyor.job_cancellations WHERE requested_at < now() - $1::bigint * interval '1 millisecond'",
        static_cast<std::int64_t>(retention.count()));
    co_return rows.affected();
}

}  // namespace conveyor::job_control
