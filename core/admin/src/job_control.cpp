#include "conveyor/admin/job_control.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <simdjson.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include "conveyor/admin/job_history.hpp"
#include "conveyor/admin/scheduled_jobs.hpp"
#include "conveyor/core/envelope.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::job_control {
namespace asio = boost::asio;

namespace {

std::optional<Command> decode_pause(simdjson::dom::element root, bool paused) {
    PauseState state;
    state.paused = paused;
    std::string_view family;
    std::string_view job_type;
    if (root["family"].get(family) != simdjson::SUCCESS || root["version"].get(state.version) != simdjson::SUCCESS) {
        return std::nullopt;
    }
    if (root["type"].error() != simdjson::NO_SUCH_FIELD && root["type"].get(job_type) != simdjson::SUCCESS) {
        return std::nullopt;
    }
    try {
        check_pause_target(family, job_type);
    } catch (const std::invalid_argument&) {
        return std::nullopt;
    }
    state.family = family;
    state.job_type = job_type;
    return state;
}

}  // namespace

std::string encode(const Command& command) {
    if (const auto* cancel = std::get_if<Cancel>(&command)) {
        return boost::json::serialize(boost::json::object{{"command", "cancel"}, {"job_id", cancel->job_id}});
    }
    const auto& pause = std::get<PauseState>(command);
    return boost::json::serialize(boost::json::object{{"command", pause.paused ? "pause" : "resume"},
                                                      {"family", pause.family},
                                                      {"type", pause.job_type},
                                                      {"version", pause.version}});
}

std::optional<Command> decode(std::string_view body) {
    simdjson::dom::parser parser;
    simdjson::dom::element root;
    std::string_view command;
    if (parser.parse(body.data(), body.size()).get(root) != simdjson::SUCCESS ||
        root["command"].get(command) != simdjson::SUCCESS) {
        return std::nullopt;
    }
    if (command == "pause" || command == "resume") {
        return decode_pause(root, command == "pause");
    }
    std::string_view job_id;
    if (command != "cancel" || root["job_id"].get(job_id) != simdjson::SUCCESS || job_id.empty()) {
        return std::nullopt;
    }
    return Cancel{std::string(job_id)};
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
        if (job->state == "succeeded" || job->state == "dead_lettered" || job->state == "cancelled" ||
            job->state == "deduplicated") {
            outcome.result = CancelOutcome::Result::terminal;
            co_return outcome;
        }
    }
    const auto state_before = job ? std::optional(job->state) : std::nullopt;
    co_await pool.query(
        "WITH tombstone AS (INSERT INTO conveyor.job_cancellations (job_id, requested_by) VALUES ($1, $2) "
        "ON CONFLICT (job_id) DO NOTHING RETURNING job_id) "
        "INSERT INTO conveyor.audit_log (actor, action, target, job_ids, details) "
        "SELECT $2, 'cancel', $1, ARRAY[$1], jsonb_build_object('state', $3::text) FROM tombstone",
        job_id, by, state_before);
    if (job && job->state == "scheduled") {
        // Published meanwhile, it is a queued job: the tombstone stops it.
        const auto scheduled = co_await scheduled_jobs::cancel(pool, std::string(job_id), "");
        outcome.result = scheduled.result == scheduled_jobs::Change::done ? CancelOutcome::Result::cancelled
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
    co_return error == amqp::Errc::unroutable ? boost::system::error_code{} : error;
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

void check_pause_target(std::string_view family, std::string_view job_type) {
    const auto& known = topology::default_families();
    if (std::find(known.begin(), known.end(), family) == known.end()) {
        throw std::invalid_argument(fmt::format("unknown job family '{}' (known: {})", family, fmt::join(known, ", ")));
    }
    if (job_type.empty()) {
        return;
    }
    if (!is_valid_job_type(job_type) || !job_type.starts_with(fmt::format("{}.", family))) {
        throw std::invalid_argument(
            fmt::format("'{}' is not a job type of the family {} (expected {}.<action>)", job_type, family, family));
    }
}

namespace {

constexpr std::string_view kPauseColumns =
    "family, job_type, paused, version, "
    "to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), changed_by";

PauseState pause_state(const pg::Result& rows, int row) {
    return {std::string(rows.text(row, 0)), std::string(rows.text(row, 1)), rows.text(row, 2) == "t",
            rows.integer(row, 3),           std::string(rows.text(row, 4)), std::string(rows.text(row, 5))};
}

}  // namespace

asio::awaitable<PauseChange> set_paused(pg::Pool& pool, std::string_view family, std::string_view job_type, bool paused,
                                        std::string_view by) {
    check_pause_target(family, job_type);
    // The version is drawn under the row's lock (DO UPDATE), so a later commit to the row has a higher one.
    const auto written = co_await pool.query(
        fmt::format(
            "WITH written AS (INSERT INTO conveyor.queue_pauses AS p (family, job_type, paused, version, changed_by) "
            "VALUES ($1, $2, $3, nextval('conveyor.queue_pause_versions'), $4) "
            "ON CONFLICT (family, job_type) DO UPDATE SET paused = EXCLUDED.paused, "
            "version = nextval('conveyor.queue_pause_versions'), changed_at = now(), "
            "changed_by = EXCLUDED.changed_by WHERE p.paused <> EXCLUDED.paused RETURNING {}), "
            "audited AS (INSERT INTO conveyor.audit_log (actor, action, target) "
            "SELECT $4, CASE WHEN $3 THEN 'pause' ELSE 'resume' END, "
            "CASE WHEN $2 = '' THEN $1 ELSE $2 END FROM written) "
            "SELECT * FROM written",
            kPauseColumns),
        family, job_type, paused, by);
    if (written.rows() == 1) {
        co_return PauseChange{pause_state(written, 0), true};
    }
    const auto current = co_await pool.query(
        fmt::format("SELECT {} FROM conveyor.queue_pauses WHERE family = $1 AND job_type = $2", kPauseColumns), family,
        job_type);
    co_return PauseChange{pause_state(current, 0), false};
}

boost::json::object to_json(const PauseState& state) {
    return {{"family", state.family},
            {"queue", topology::queue_name(state.family)},
            {"type", state.job_type.empty() ? boost::json::value(nullptr) : boost::json::value(state.job_type)},
            {"paused", state.paused},
            {"changed_at", state.changed_at},
            {"changed_by", state.changed_by}};
}

FamilyPause family_pause(const std::vector<PauseState>& states, std::string_view family) {
    FamilyPause pause;
    for (const auto& state : states) {
        if (state.family != family || !state.paused) {
            continue;
        }
        if (state.job_type.empty()) {
            pause.whole = state;
        } else {
            pause.types.push_back(state.job_type);
        }
    }
    return pause;
}

boost::json::object to_json(const FamilyPause& pause) {
    boost::json::array types;
    for (const auto& type : pause.types) {
        types.emplace_back(type);
    }
    return {{"paused", pause.whole.has_value()}, {"paused_types", std::move(types)}};
}

asio::awaitable<std::vector<PauseState>> pauses(pg::Pool& pool) {
    const auto rows = co_await pool.query(
        fmt::format("SELECT {} FROM conveyor.queue_pauses ORDER BY family, job_type", kPauseColumns));
    std::vector<PauseState> states;
    states.reserve(static_cast<std::size_t>(rows.rows()));
    for (int row = 0; row < rows.rows(); ++row) {
        states.push_back(pause_state(rows, row));
    }
    co_return states;
}

}  // namespace conveyor::job_control
