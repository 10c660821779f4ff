#include "conveyor/admin/dead_letters.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <stdexcept>

#include "conveyor/core/topology.hpp"

namespace conveyor::dead_letters {
namespace asio = boost::asio;

namespace {

// $1…$9 are the filter's fields, in Filter's order; further parameters come after.
constexpr std::string_view kWhere =
    "($1::text IS NULL OR family = $1) AND ($2::text IS NULL OR type = $2) AND ($3::text IS NULL OR reason = $3) "
    "AND ($4::text IS NULL OR strpos(lower(error), lower($4)) > 0) "
    "AND ($5::timestamptz IS NULL OR failed_at >= $5::timestamptz) "
    "AND ($6::timestamptz IS NULL OR failed_at < $6::timestamptz) AND ($7::text IS NULL OR job_id = $7) "
    "AND ($8::text IS NULL OR fingerprint = lower($8)) AND ($9::text IS NULL OR state = $9)";

// The filter's fields ($1…$9) as a JSON object of those that are set, for the audit log.
constexpr std::string_view kFilterJson =
    "jsonb_strip_nulls(jsonb_build_object('family', $1::text, 'type', $2::text, 'reason', $3::text, "
    "'error_contains', $4::text, 'since', $5::text, 'until', $6::text, 'job_id', $7::text, 'fingerprint', $8::text, "
    "'state', $9::text))";

std::vector<pg::Param> filter_params(const Filter& filter) {
    return {filter.family, filter.type,   filter.reason,      filter.error_contains, filter.since,
            filter.until,  filter.job_id, filter.fingerprint, filter.state};
}

/// Runs `sql` with the filter's condition in place of its {where} (and its JSON in place of {filter_json}), on a pool
/// or in a transaction; the filter's parameters are $1…$9 and `extra` follow from $10.
template <typename Session>
asio::awaitable<pg::Result> query_filtered(Session& session, std::string_view sql, const Filter& filter,
                                           std::vector<pg::Param> extra = {}) {
    // Named: no temporaries inside co_await for g++ 12.
    auto statement = fmt::format(fmt::runtime(sql), fmt::arg("where", kWhere), fmt::arg("filter_json", kFilterJson));
    auto params = filter_params(filter);
    params.insert(params.end(), std::make_move_iterator(extra.begin()), std::make_move_iterator(extra.end()));
    auto rows = co_await session.query_params(std::move(statement), std::move(params));
    co_return rows;
}

}  // namespace

void Filter::validate() const {
    if (family) {
        const auto& known = topology::default_families();
        if (std::find(known.begin(), known.end(), *family) == known.end()) {
            throw std::invalid_argument(
                fmt::format("unknown family '{}' (known: {})", *family, fmt::join(known, ", ")));
        }
    }
    if (state && *state != "dead" && *state != "replayed") {
        throw std::invalid_argument(fmt::format("state must be dead, replayed or all, not '{}'", *state));
    }
    if (fingerprint && (fingerprint->size() != 16 || !std::all_of(fingerprint->begin(), fingerprint->end(), [](char c) {
                            return std::isxdigit(static_cast<unsigned char>(c)) != 0;
                        }))) {
        throw std::invalid_argument(
            fmt::format("fingerprint '{}' is not 16 hexadecimal digits (see conveyor dlq groups)", *fingerprint));
    }
}

std::string decode_body(std::string_view hex) {
    if (hex.starts_with("\\x")) {
        hex.remove_prefix(2);
    }
    auto nibble = [](char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; };
    std::string bytes;
    bytes.reserve(hex.size() / 2);
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
        bytes += static_cast<char>((nibble(hex[i]) << 4) | nibble(hex[i + 1]));
    }
    return bytes;
}

asio::awaitable<pg::Result> list(pg::Pool& pool, const Filter& filter, std::int64_t limit) {
    return query_filtered(
        pool,
        "SELECT id, job_id, type, family, reason, attempts, "
        "to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), error, "
        "fingerprint, state, correlation_id FROM conveyor.dead_letters WHERE {where} ORDER BY id LIMIT $10",
        filter, {std::to_string(limit)});
}

asio::awaitable<pg::Result> show(pg::Pool& pool, std::int64_t id) {
    auto rows = co_await pool.query(
        "SELECT id, job_id, type, family, queue, routing_key, reason, attempts, "
        "to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
        "to_char(archived_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), error, error_pattern, "
        "fingerprint, correlation_id, headers::text, encode(body, 'hex'), state, "
        "to_char(replayed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), replayed_by, replayed_as "
        "FROM conveyor.dead_letters WHERE id = $1",
        id);
    co_return rows;
}

asio::awaitable<pg::Result> stats(pg::Pool& pool, const Filter& filter) {
    return query_filtered(pool,
                          "SELECT family, type, reason, count(*), "
                          "to_char(min(failed_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
                          "FROM conveyor.dead_letters WHERE {where} GROUP BY family, type, reason "
                          "ORDER BY count(*) DESC, family, type, reason",
                          filter);
}

asio::awaitable<pg::Result> groups(pg::Pool& pool, const Filter& filter) {
    return query_filtered(pool,
                          "SELECT fingerprint, count(*), min(error_pattern), string_agg(DISTINCT type, ','), "
                          "to_char(min(failed_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
                          "to_char(max(failed_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
                          "(array_agg(error ORDER BY id))[1] FROM conveyor.dead_letters WHERE {where} "
                          "GROUP BY fingerprint ORDER BY count(*) DESC, fingerprint",
                          filter);
}

asio::awaitable<std::int64_t> count(pg::Pool& pool, const Filter& filter) {
    const auto rows = co_await query_filtered(pool, "SELECT count(*) FROM conveyor.dead_letters WHERE {where}", filter);
    co_return rows.integer(0, 0);
}

asio::awaitable<pg::Result> claim(pg::Transaction& transaction, const Filter& filter, std::int64_t after,
                                  std::int64_t limit) {
    return query_filtered(transaction,
                          "SELECT id, job_id, type, routing_key, correlation_id, headers::text, encode(body, 'hex') "
                          "FROM conveyor.dead_letters WHERE {where} AND id > $10 ORDER BY id LIMIT $11 "
                          "FOR UPDATE SKIP LOCKED",
                          filter, {std::to_string(after), std::to_string(limit)});
}

std::string describe(const Filter& filter) {
    std::vector<std::string> parts;
    const auto add = [&parts](std::string_view name, const std::optional<std::string>& value) {
        if (value) {
            parts.push_back(fmt::format("{}={}", name, *value));
        }
    };
    add("family", filter.family);
    add("type", filter.type);
    add("reason", filter.reason);
    add("error", filter.error_contains);
    add("since", filter.since);
    add("until", filter.until);
    add("job", filter.job_id);
    add("fingerprint", filter.fingerprint);
    return parts.empty() ? std::string("all dead letters") : fmt::format("dead letters {}", fmt::join(parts, " "));
}

asio::awaitable<std::int64_t> open_replay_entry(pg::Pool& pool, const Filter& filter, const std::string& by,
                                                const std::string& as_type, std::int64_t matched) {
    std::vector<pg::Param> entry{by, describe(filter), std::to_string(matched),
                                 as_type.empty() ? pg::Param() : pg::Param(as_type)};
    const auto rows = co_await query_filtered(
        pool,
        "INSERT INTO conveyor.audit_log (actor, action, target, details) SELECT $10, 'replay', $11, "
        "jsonb_strip_nulls(jsonb_build_object('filter', {filter_json}, 'matched', $12::bigint, 'as_type', $13::text)) "
        "RETURNING id",
        filter, std::move(entry));
    co_return rows.integer(0, 0);
}

asio::awaitable<void> close_replay_entry(pg::Pool& pool, std::int64_t entry, std::int64_t replayed,
                                         const std::string& failure) {
    co_await pool.query(
        "UPDATE conveyor.audit_log SET details = details || jsonb_strip_nulls(jsonb_build_object('replayed', "
        "$2::bigint, 'failure', $3::text)) WHERE id = $1",
        entry, replayed, failure.empty() ? std::nullopt : std::optional(failure));
}

asio::awaitable<void> mark_replayed(pg::Transaction& transaction, const std::vector<std::string>& ids,
                                    const std::string& by, const std::string& as_type, std::int64_t audit_entry) {
    if (ids.empty()) {
        co_return;
    }
    const auto id_array = fmt::format("{{{}}}", fmt::join(ids, ","));
    const std::optional<std::string> as = as_type.empty() ? std::nullopt : std::optional(as_type);
    co_await transaction.query(
        "WITH marked AS (UPDATE conveyor.dead_letters SET state = 'replayed', replayed_at = now(), replayed_by = $2, "
        "replayed_as = coalesce($3, type) WHERE id = ANY($1::bigint[]) RETURNING queue, job_id), "
        "audited AS (UPDATE conveyor.audit_log SET job_ids = job_ids || (SELECT array_agg(job_id) FROM marked) "
        "WHERE id = $4) "
        "INSERT INTO conveyor.dead_letter_replays AS r (queue, replayed) "
        "SELECT queue, count(*) FROM marked GROUP BY queue "
        "ON CONFLICT (queue) DO UPDATE SET replayed = r.replayed + excluded.replayed",
        id_array, by, as, audit_entry);
}

asio::awaitable<Purged> purge(pg::Pool& pool, const Filter& filter, const std::string& by,
                              std::optional<std::int64_t> expected) {
    auto transaction = co_await pool.begin();
    std::vector<pg::Param> entry{by, describe(filter)};
    Purged purged;
    purged.by_type_and_reason = co_await query_filtered(
        transaction,
        "WITH gone AS (DELETE FROM conveyor.dead_letters WHERE {where} RETURNING type, reason, job_id), "
        "audited AS (INSERT INTO conveyor.audit_log (actor, action, target, job_ids, details) "
        "SELECT $10, 'purge', $11, array_agg(job_id), jsonb_build_object('filter', {filter_json}, 'count', count(*)) "
        "FROM gone HAVING count(*) > 0) "
        "SELECT type, reason, count(*) FROM gone GROUP BY type, reason ORDER BY count(*) DESC, type",
        filter, std::move(entry));
    for (int row = 0; row < purged.by_type_and_reason.rows(); ++row) {
        purged.deleted += purged.by_type_and_reason.integer(row, 2);
    }
    purged.refused = expected && *expected != purged.deleted;
    if (!purged.refused) {
        co_await transaction.commit();
    }
    co_return purged;
}

asio::awaitable<Outcomes> outcomes(pg::Pool& pool, const std::vector<std::string>& job_ids, const std::string& since) {
    const auto ids = pg::text_array(job_ids);
    const auto rows = co_await pool.query(
        "SELECT (SELECT count(*) FROM conveyor.inbox WHERE message_id = ANY($1::text[]) AND processed_at >= "
        "$2::timestamptz), "
        "(SELECT count(DISTINCT job_id) FROM conveyor.dead_letters WHERE job_id = ANY($1::text[]) "
        "AND state = 'dead' AND archived_at >= $2::timestamptz), "
        "(SELECT error FROM conveyor.dead_letters WHERE job_id = ANY($1::text[]) AND state = 'dead' "
        "AND archived_at >= $2::timestamptz ORDER BY id LIMIT 1)",
        ids, since);
    Outcomes result;
    result.succeeded = rows.integer(0, 0);
    result.failed = rows.integer(0, 1);
    if (!rows.is_null(0, 2)) {
        result.example_error = rows.text(0, 2);
    }
    co_return result;
}

}  // namespace conveyor::dead_letters
