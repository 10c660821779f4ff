#include "conveyor/admin/workers.hpp"

#include <fmt/format.h>

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

namespace conveyor::workers {
namespace asio = boost::asio;
namespace json = boost::json;

namespace {

/// queues as PostgreSQL prints a text[] ("{a,b}") back to names; family names need no quoting.
std::vector<std::string> queue_names(std::string_view array) {
    std::vector<std::string> names;
    array.remove_prefix(std::min<std::size_t>(1, array.size()));
    array.remove_suffix(std::min<std::size_t>(1, array.size()));
    while (!array.empty()) {
        const auto comma = array.find(',');
        names.emplace_back(array.substr(0, comma));
        array.remove_prefix(comma == std::string_view::npos ? array.size() : comma + 1);
    }
    return names;
}

Worker worker_of(const pg::Result& rows, int row) {
    Worker worker;
    worker.instance_id = rows.text(row, 0);
    worker.identity = {std::string(rows.text(row, 1)),
                       std::string(rows.text(row, 2)),
                       std::string(rows.text(row, 3)),
                       static_cast<int>(rows.integer(row, 4)),
                       queue_names(rows.text(row, 5)),
                       static_cast<unsigned>(rows.integer(row, 6)),
                       std::chrono::milliseconds(rows.integer(row, 7))};
    worker.load.in_flight = rows.integer(row, 8);
    worker.load.succeeded = rows.integer(row, 9);
    worker.load.retried = rows.integer(row, 10);
    worker.load.dead_lettered = rows.integer(row, 11);
    worker.state = rows.text(row, 12);
    worker.started_at = rows.text(row, 13);
    worker.last_seen_at = rows.text(row, 14);
    worker.stopped_at = rows.text(row, 15);
    worker.seconds_since_seen = std::stod(std::string(rows.text(row, 16)));
    const auto breakers = json::parse(rows.text(row, 17));
    for (const auto& [name, state] : breakers.as_object()) {
        worker.load.circuit_breakers.emplace(name, state.as_string());
    }
    if (!rows.is_null(row, 18)) {
        worker.load.workers_needed = rows.integer(row, 18);
    }
    return worker;
}

}  // namespace

asio::awaitable<std::string> register_instance(pg::Pool& pool, const Identity& identity) {
    const auto rows = co_await pool.query(
        "INSERT INTO conveyor.workers (instance_id, name, version, host, pid, queues, concurrency, "
        "heartbeat_interval_ms) VALUES (gen_random_uuid(), $1, $2, $3, $4, $5::text[], $6, $7) RETURNING instance_id",
        identity.name, identity.version, identity.host, identity.pid, pg::text_array(identity.queues),
        identity.concurrency, identity.heartbeat_interval.count());
    co_return std::string(rows.text(0, 0));
}

namespace {

asio::awaitable<void> write_load(pg::Pool& pool, const std::string& instance_id, const Load& load, bool stopping) {
    json::object breakers;
    for (const auto& [name, state] : load.circuit_breakers) {
        breakers[name] = state;
    }
    const auto circuit_breakers = json::serialize(breakers);
    co_await pool.query(
        "UPDATE conveyor.workers SET last_seen_at = now(), in_flight = $2, succeeded = $3, retried = $4, "
        "dead_lettered = $5, circuit_breakers = $6::jsonb, stopped_at = CASE WHEN $7 THEN now() END, "
        "workers_needed = $8 WHERE instance_id = $1",
        instance_id, load.in_flight, load.succeeded, load.retried, load.dead_lettered, circuit_breakers, stopping,
        load.workers_needed);
}

}  // namespace

asio::awaitable<void> beat(pg::Pool& pool, const std::string& instance_id, const Load& load) {
    co_await write_load(pool, instance_id, load, false);
}

asio::awaitable<void> stop(pg::Pool& pool, const std::string& instance_id, const Load& load) {
    co_await write_load(pool, instance_id, load, true);
}

asio::awaitable<std::vector<Worker>> list(pg::Pool& pool) {
    const auto sql = fmt::format(
        "SELECT instance_id, name, version, host, pid, queues, concurrency, heartbeat_interval_ms, in_flight, "
        "succeeded, retried, dead_lettered, state, {}, {}, {}, extract(epoch FROM now() - last_seen_at)::float8, "
        "circuit_breakers::text, workers_needed "
        "FROM (SELECT *, CASE WHEN stopped_at IS NOT NULL THEN 'stopped' "
        "WHEN last_seen_at < now() - make_interval(secs => {} * heartbeat_interval_ms / 1000.0) THEN 'gone' "
        "ELSE 'running' END AS state FROM conveyor.workers) w "
        "ORDER BY state = 'running' DESC, last_seen_at DESC, name",
        pg::utc_text("started_at"), pg::utc_text("last_seen_at"),
        fmt::format("coalesce({}, '')", pg::utc_text("stopped_at")), kMissedHeartbeats);
    const auto rows = co_await pool.query(sql);
    std::vector<Worker> workers;
    workers.reserve(static_cast<std::size_t>(rows.rows()));
    for (int row = 0; row < rows.rows(); ++row) {
        workers.push_back(worker_of(rows, row));
    }
    co_return workers;
}

asio::awaitable<std::int64_t> prune(pg::Pool& pool, std::chrono::milliseconds retention) {
    const auto rows = co_await pool.query(
        "DELETE FROM conveyor.workers WHERE last_seen_at < now() - make_interval(secs => $1 / 1000.0)",
        retention.count());
    co_return rows.affected();
}

json::value to_json(const std::vector<Worker>& workers) {
    json::array listed;
    std::int64_t running = 0;
    for (const auto& worker : workers) {
        running += worker.state == "running" ? 1 : 0;
        json::array queues;
        for (const auto& queue : worker.identity.queues) {
            queues.emplace_back(queue);
        }
        json::object breakers;
        for (const auto& [name, state] : worker.load.circuit_breakers) {
            breakers[name] = state;
        }
        listed.push_back(json::object{
            {"instance_id", worker.instance_id},
            {"name", worker.identity.name},
            {"version", worker.identity.version},
            {"host", worker.identity.host},
            {"pid", worker.identity.pid},
            {"queues", std::move(queues)},
            {"concurrency", worker.identity.concurrency},
            {"heartbeat_interval_ms", worker.identity.heartbeat_interval.count()},
            {"in_flight", worker.load.in_flight},
            {"succeeded", worker.load.succeeded},
            {"retried", worker.load.retried},
            {"dead_lettered", worker.load.dead_lettered},
            {"state", worker.state},
            {"started_at", worker.started_at},
            {"last_seen_at", worker.last_seen_at},
            {"stopped_at", worker.stopped_at.empty() ? json::value(nullptr) : json::value(worker.stopped_at)},
            {"seconds_since_seen", worker.seconds_since_seen},
            {"circuit_breakers", std::move(breakers)},
            {"workers_needed",
             worker.load.workers_needed ? json::value(*worker.load.workers_needed) : json::value(nullptr)},
        });
    }
    return json::object{{"workers", std::move(listed)}, {"running", running}};
}

}  // namespace conveyor::workers
