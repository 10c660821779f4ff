#include "conveyor/admin/job_history.hpp"

#include <fmt/format.h>

#include <array>
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include "conveyor/admin/scheduled_jobs.hpp"
#include "conveyor/core/config.hpp"
#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/topology.hpp"
#include "conveyor/core/utf8.hpp"

namespace conveyor::job_history {
namespace asio = boost::asio;
namespace json = boost::json;

namespace {

constexpr std::int64_t kMaxPage = 1000;

/// Text PostgreSQL stores: no NUL (text cannot hold it) and valid UTF-8.
std::string storable(std::string_view text) {
    auto clean = utf8::sanitized(text);
    std::replace(clean.begin(), clean.end(), '\0', '?');
    return clean;
}

json::value text_or_null(std::string_view text) {
    return text.empty() ? json::value(nullptr) : json::value(storable(text));
}

/// The columns of a batch as PostgreSQL array literals, one per column: unnest() turns them back into rows at a
/// fraction of what reading the same rows from JSON costs the server (no key lookups, no timestamp parsing).
class ArrayColumns {
  public:
    void text(std::size_t column, std::string_view value) {
        auto& out = open(column);
        out += '"';
        for (const char c : storable(value)) {
            if (c == '"' || c == '\\') {
                out += '\\';
            }
            out += c;
        }
        out += '"';
    }
    void text_or_null(std::size_t column, std::string_view value) {
        if (value.empty()) {
            open(column) += "NULL";
        } else {
            text(column, value);
        }
    }
    template <typename Number>
    void number(std::size_t column, const std::optional<Number>& value) {
        auto& out = open(column);
        if (value) {
            fmt::format_to(std::back_inserter(out), "{}", *value);
        } else {
            out += "NULL";
        }
    }
    /// Microseconds since the epoch: the statement turns them into timestamptz with arithmetic alone.
    void time(std::size_t column, const std::optional<std::chrono::system_clock::time_point>& at) {
        std::optional<std::int64_t> micros;
        if (at) {
            micros = std::chrono::duration_cast<std::chrono::microseconds>(at->time_since_epoch()).count();
        }
        number(column, micros);
    }
    [[nodiscard]] std::vector<pg::Param> params() && {
        std::vector<pg::Param> params;
        for (auto& column : columns_) {
            column += '}';
            params.emplace_back(std::move(column));
        }
        return params;
    }

  private:
    std::string& open(std::size_t column) {
        auto& out = columns_.at(column);
        if (out.size() > 1) {
            out += ',';
        }
        return out;
    }
    std::array<std::string, 15> columns_{"{", "{", "{", "{", "{", "{", "{", "{", "{", "{", "{", "{", "{", "{", "{"};
};

std::string or_empty(const pg::Result& rows, int row, int column) {
    return rows.is_null(row, column) ? std::string() : std::string(rows.text(row, column));
}

std::optional<double> fraction(const pg::Result& rows, int row, int column) {
    if (rows.is_null(row, column)) {
        return std::nullopt;
    }
    return std::stod(std::string(rows.text(row, column)));
}

/// The runs of a job (an attempt number runs again when a worker died or stopped during it), oldest first.
const std::string kRunsQuery = fmt::format(
    "SELECT DISTINCT ON (started_at, attempt) attempt, state, worker, {}, {}, "
    "(extract(epoch FROM ended_at - started_at) * 1000)::bigint, error, type, queue, correlation_id, trace_id, {}, "
    "progress, progress_note, {} "
    "FROM conveyor.job_events WHERE job_id = $1 "
    "ORDER BY started_at, attempt, recorded_at DESC, (state <> 'running') DESC",
    pg::utc_text("started_at"), pg::utc_text("ended_at"), pg::utc_text("enqueued_at"), pg::utc_text("recorded_at"));

Job job_from_runs(std::string_view job_id, const pg::Result& runs) {
    Job job;
    job.id = std::string(job_id);
    const int last = runs.rows() - 1;
    job.type = runs.text(last, 7);
    job.queue = runs.text(last, 8);
    job.correlation_id = or_empty(runs, last, 9);
    job.trace_id = or_empty(runs, last, 10);
    job.enqueued_at = or_empty(runs, last, 11);
    job.progress = fraction(runs, last, 12);
    job.progress_note = or_empty(runs, last, 13);
    job.updated_at = runs.text(last, 14);
    // A run that met an already-applied inbox entry means an earlier one committed, whatever was recorded of it
    // (its end may have been lost with the connection that committed it).
    job.state = runs.text(last, 1) == "duplicate" ? std::string("succeeded") : std::string(runs.text(last, 1));
    for (int row = 0; row <= last; ++row) {
        Attempt attempt{.number = runs.integer(row, 0),
                        .state = std::string(runs.text(row, 1)),
                        .worker = std::string(runs.text(row, 2)),
                        .started_at = std::string(runs.text(row, 3)),
                        .ended_at = or_empty(runs, row, 4),
                        .duration_ms = std::nullopt,
                        .error = or_empty(runs, row, 6)};
        if (!runs.is_null(row, 5)) {
            attempt.duration_ms = runs.integer(row, 5);
        }
        // Its worker died or stopped while it ran: a later run took it over.
        if (attempt.state == "running" && row < last) {
            attempt.state = "interrupted";
        }
        job.attempts.push_back(std::move(attempt));
    }
    return job;
}

/// A job no worker has taken yet, as conveyor.scheduled_jobs has it.
asio::awaitable<std::optional<Job>> find_scheduled(pg::Pool& pool, std::string_view job_id) {
    if (!scheduled_jobs::is_job_id(job_id)) {
        co_return std::nullopt;
    }
    const auto rows = co_await pool.query(
        fmt::format("SELECT type, CASE state WHEN 'pending' THEN 'scheduled' WHEN 'failed' THEN 'dead_lettered' "
                    "ELSE state END, correlation_id, traceparent, {}, {}, error "
                    "FROM conveyor.scheduled_jobs WHERE id = $1::uuid",
                    pg::utc_text("run_at"), pg::utc_text("coalesce(finished_at, created_at)")),
        job_id);
    if (rows.rows() == 0) {
        co_return std::nullopt;
    }
    Job job{.id = std::string(job_id),
            .type = std::string(rows.text(0, 0)),
            .queue = "",
            .state = std::string(rows.text(0, 1)),
            .correlation_id = or_empty(rows, 0, 2),
            .trace_id = "",
            .enqueued_at = std::string(rows.text(0, 4)),
            .updated_at = std::string(rows.text(0, 5)),
            .progress = std::nullopt,
            .progress_note = "",
            .attempts = {}};
    const auto dot = job.type.find('.');
    job.queue = topology::queue_name(std::string_view(job.type).substr(0, dot));
    if (const auto traceparent = or_empty(rows, 0, 3); traceparent.size() >= 35) {
        job.trace_id = traceparent.substr(3, 32);
    }
    if (!rows.is_null(0, 6)) {
        job.attempts.push_back({.number = 0,
                                .state = job.state,
                                .worker = "conveyor-scheduler",
                                .started_at = job.updated_at,
                                .ended_at = job.updated_at,
                                .duration_ms = std::nullopt,
                                .error = std::string(rows.text(0, 6))});
    }
    co_return job;
}

/// The cursor of the page that follows `job`: its latest event's time (microseconds) and its id.
std::pair<std::string, std::string> split_cursor(std::string_view cursor) {
    const auto bar = cursor.find('|');
    if (bar == std::string_view::npos || bar == 0 || bar + 1 == cursor.size()) {
        throw std::invalid_argument("after: not a cursor from a previous page");
    }
    return {std::string(cursor.substr(0, bar)), std::string(cursor.substr(bar + 1))};
}

bool is_timestamp(std::string_view text) {
    return text.size() >= 10 && text[4] == '-' && text[7] == '-';
}

}  // namespace

bool is_state(std::string_view state) noexcept {
    static constexpr std::array<std::string_view, 8> kStates = {
        "scheduled", "published", "running", "succeeded", "retrying", "dead_lettered", "cancelled", "deduplicated"};
    return std::find(kStates.begin(), kStates.end(), state) != kStates.end();
}

asio::awaitable<void> insert(pg::Pool& pool, const std::vector<Event>& events) {
    ArrayColumns columns;
    for (const auto& event : events) {
        columns.text(0, event.job_id);
        columns.number(1, std::optional<std::uint32_t>(event.attempt));
        columns.text(2, event.state);
        columns.text(3, event.type);
        columns.text(4, event.queue);
        columns.text(5, event.worker);
        columns.text_or_null(6, event.correlation_id);
        columns.text_or_null(7, event.trace_id);
        columns.time(8, event.enqueued_at);
        columns.time(9, event.started_at);
        columns.time(10, event.ended_at);
        columns.text_or_null(11, job_headers::bounded(event.error, job_headers::kMaxErrorBytes));
        columns.number(12, event.progress ? std::optional(std::clamp(*event.progress, 0.0, 1.0)) : std::nullopt);
        columns.text_or_null(13, event.progress_note);
        columns.time(14, event.recorded_at);
    }
    co_await pool.query_params(
        "INSERT INTO conveyor.job_events (job_id, attempt, state, type, queue, worker, correlation_id, trace_id, "
        "enqueued_at, started_at, ended_at, error, progress, progress_note, recorded_at) "
        "SELECT job_id, attempt, state, type, queue, worker, correlation_id, trace_id, "
        "to_timestamp(enqueued_at / 1e6), to_timestamp(started_at / 1e6), to_timestamp(ended_at / 1e6), error, "
        "progress, progress_note, to_timestamp(recorded_at / 1e6) "
        "FROM unnest($1::text[], $2::integer[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "
        "$8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::real[], $14::text[], $15::bigint[]) "
        "AS e(job_id, attempt, state, type, queue, worker, correlation_id, trace_id, enqueued_at, started_at, "
        "ended_at, error, progress, progress_note, recorded_at)",
        std::move(columns).params());
}

asio::awaitable<std::int64_t> maintain(pg::Pool& pool, std::chrono::milliseconds retention) {
    const auto rows = co_await pool.query("SELECT conveyor.maintain_job_history($1::bigint * interval '1 millisecond')",
                                          static_cast<std::int64_t>(retention.count()));
    co_return rows.integer(0, 0);
}

bool is_missing_partition(const pg::Error& error) noexcept {
    // check_violation, with this message: "no partition of relation "job_events" found for row".
    return error.sqlstate() == "23514" && error.message().find("no partition") != std::string::npos;
}

asio::awaitable<std::optional<Job>> find(pg::Pool& pool, std::string_view job_id) {
    const auto runs = co_await pool.query(kRunsQuery, job_id);
    if (runs.rows() > 0) {
        co_return job_from_runs(job_id, runs);
    }
    auto scheduled = co_await find_scheduled(pool, job_id);
    co_return scheduled;
}

void Filter::validate() const {
    if (state && (!is_state(*state) || *state == "scheduled" || *state == "published")) {
        throw std::invalid_argument(
            fmt::format("state: '{}' is not one of running, succeeded, retrying, dead_lettered, cancelled, "
                        "deduplicated (scheduled jobs: conveyor scheduled list, GET /v1/scheduled)",
                        *state));
    }
    if (limit < 1 || limit > kMaxPage) {
        throw std::invalid_argument(fmt::format("limit: must be 1 to {}, not {}", kMaxPage, limit));
    }
    if (!after.empty()) {
        (void)split_cursor(after);
    }
    if (since.empty()) {
        throw std::invalid_argument("since: a timestamp or an interval (e.g. 2026-12-05T08:00:00Z, 2 hours)");
    }
}

asio::awaitable<Page> list(pg::Pool& pool, const Filter& filter) {
    filter.validate();
    std::optional<std::string> after_at;
    std::optional<std::string> after_id;
    if (!filter.after.empty()) {
        auto [at, id] = split_cursor(filter.after);
        after_at = std::move(at);
        after_id = std::move(id);
    }
    const std::optional<std::string> since_at = is_timestamp(filter.since) ? std::optional(filter.since) : std::nullopt;
    const std::optional<std::string> since_ago = since_at ? std::nullopt : std::optional(filter.since);
    const auto rows = co_await pool.query(
        fmt::format("WITH latest AS (SELECT DISTINCT ON (job_id) job_id, type, queue, "
                    "CASE state WHEN 'duplicate' THEN 'succeeded' ELSE state END AS state, correlation_id, trace_id, "
                    "enqueued_at, progress, progress_note, recorded_at FROM conveyor.job_events "
                    "WHERE recorded_at >= coalesce($1::timestamptz, now() - $2::interval) "
                    "AND ($3::text IS NULL OR type = $3) AND ($4::text IS NULL OR queue = $4) "
                    "AND ($5::text IS NULL OR correlation_id = $5) "
                    "ORDER BY job_id, recorded_at DESC, (state <> 'running') DESC) "
                    "SELECT job_id, type, queue, state, correlation_id, trace_id, {}, progress, progress_note, {}, "
                    "to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM latest "
                    "WHERE ($6::text IS NULL OR state = $6) "
                    "AND ($7::timestamptz IS NULL OR (recorded_at, job_id) < ($7::timestamptz, $8::text)) "
                    "ORDER BY recorded_at DESC, job_id DESC LIMIT $9",
                    pg::utc_text("enqueued_at"), pg::utc_text("recorded_at")),
        since_at, since_ago, filter.type, filter.queue, filter.correlation_id, filter.state, after_at, after_id,
        filter.limit + 1);
    Page page;
    const int shown = std::min<int>(rows.rows(), static_cast<int>(filter.limit));
    for (int row = 0; row < shown; ++row) {
        page.jobs.push_back({.id = std::string(rows.text(row, 0)),
                             .type = std::string(rows.text(row, 1)),
                             .queue = std::string(rows.text(row, 2)),
                             .state = std::string(rows.text(row, 3)),
                             .correlation_id = or_empty(rows, row, 4),
                             .trace_id = or_empty(rows, row, 5),
                             .enqueued_at = or_empty(rows, row, 6),
                             .updated_at = std::string(rows.text(row, 9)),
                             .progress = fraction(rows, row, 7),
                             .progress_note = or_empty(rows, row, 8),
                             .attempts = {}});
    }
    if (rows.rows() > shown) {
        page.next = fmt::format("{}|{}", rows.text(shown - 1, 10), rows.text(shown - 1, 0));
    }
    co_return page;
}

json::value to_json(const Job& job) {
    json::object object{{"id", job.id},
                        {"type", job.type},
                        {"queue", job.queue},
                        {"state", job.state},
                        {"correlation_id", text_or_null(job.correlation_id)},
                        {"trace_id", text_or_null(job.trace_id)},
                        {"enqueued_at", text_or_null(job.enqueued_at)},
                        {"updated_at", job.updated_at}};
    object["progress"] =
        job.progress ? json::value(json::object{{"fraction", *job.progress}, {"note", text_or_null(job.progress_note)}})
                     : json::value(nullptr);
    json::array attempts;
    for (const auto& attempt : job.attempts) {
        attempts.push_back(json::object{
            {"attempt", attempt.number},
            {"state", attempt.state},
            {"worker", attempt.worker},
            {"started_at", attempt.started_at},
            {"ended_at", text_or_null(attempt.ended_at)},
            {"duration_ms", attempt.duration_ms ? json::value(*attempt.duration_ms) : json::value(nullptr)},
            {"error", text_or_null(attempt.error)}});
    }
    object["attempts"] = std::move(attempts);
    return object;
}

json::value summary_json(const Job& job) {
    auto value = to_json(job);
    value.as_object().erase("attempts");
    return value;
}

json::value to_json(const Page& page) {
    json::array jobs;
    for (const auto& job : page.jobs) {
        jobs.push_back(summary_json(job));
    }
    return json::object{{"jobs", std::move(jobs)}, {"next", text_or_null(page.next)}};
}

asio::awaitable<json::value> activity(pg::Pool& pool, int minutes) {
    // Built by PostgreSQL as one JSON document: the counts never leave the server row by row.
    const auto rows = co_await pool.query(
        "WITH ended AS (SELECT regexp_replace(queue, '\\.(high|low)$', '') AS queue, state, attempt, started_at, "
        "ended_at, enqueued_at FROM conveyor.job_events "
        "WHERE recorded_at >= now() - make_interval(mins => $1) AND ended_at >= now() - make_interval(mins => $1) "
        "AND state IN ('succeeded', 'dead_lettered', 'retrying')), "
        "per_minute AS (SELECT queue, json_agg(json_build_object('minute', to_char(minute AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI\"Z\"'), 'succeeded', succeeded, 'failed', failed, 'retried', retried) "
        "ORDER BY minute) AS minutes FROM (SELECT queue, date_trunc('minute', ended_at) AS minute, "
        "count(*) FILTER (WHERE state = 'succeeded') AS succeeded, "
        "count(*) FILTER (WHERE state = 'dead_lettered') AS failed, "
        "count(*) FILTER (WHERE state = 'retrying') AS retried FROM ended GROUP BY 1, 2) m GROUP BY queue), "
        "summary AS (SELECT queue, count(*) FILTER (WHERE state = 'succeeded') AS succeeded, "
        "count(*) FILTER (WHERE state = 'dead_lettered') AS failed, "
        "count(*) FILTER (WHERE state = 'retrying') AS retried, "
        "round(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM ended_at - started_at) * 1000)"
        "::numeric, 1) AS p95_duration_ms, "
        "round(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - enqueued_at) * 1000) "
        "FILTER (WHERE attempt = 1 AND enqueued_at IS NOT NULL)::numeric, 1) AS p95_wait_ms "
        "FROM ended GROUP BY queue) "
        "SELECT coalesce(json_agg(json_build_object('queue', s.queue, 'succeeded', s.succeeded, 'failed', s.failed, "
        "'retried', s.retried, 'p95_duration_ms', s.p95_duration_ms, 'p95_wait_ms', s.p95_wait_ms, "
        "'minutes', p.minutes) ORDER BY s.queue), '[]')::text FROM summary s JOIN per_minute p USING (queue)",
        minutes);
    co_return json::parse(rows.text(0, 0));
}

}  // namespace conveyor::job_history
