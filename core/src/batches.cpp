#include "conveyor/core/batches.hpp"

#include <fmt/format.h>

#include <stdexcept>

#include "conveyor/core/envelope.hpp"
#include "conveyor/core/job_headers.hpp"

namespace conveyor::batches {
namespace asio = boost::asio;

namespace {

// PostgreSQL's codes for what the batch functions raise, and for a taken primary key.
constexpr std::string_view kNoData = "P0002";
constexpr std::string_view kNotInPrerequisiteState = "55000";
constexpr std::string_view kInvalidParameterValue = "22023";
constexpr std::string_view kUniqueViolation = "23505";
constexpr std::string_view kInvalidJson = "22P02";

/// A failure the caller caused (the batch's state or their input) as the refusal it is; others as they are.
[[noreturn]] void rethrow_refusal(const pg::Error& error) {
    const auto& code = error.sqlstate();
    // PostgreSQL's message ("ERROR:  batch b-1 is sealed already" and context lines): its first line, bare.
    std::string message = error.what();
    message = message.substr(0, message.find('\n'));
    const auto colon = message.find(":  ");
    message = colon == std::string::npos ? message : message.substr(colon + 3);
    if (code == kNoData) {
        throw NoSuchBatch(message);
    }
    if (code == kNotInPrerequisiteState) {
        throw BatchConflict(message);
    }
    if (code == kInvalidParameterValue) {
        throw std::invalid_argument(message);
    }
    throw error;
}

void check_id(const std::string& id) {
    if (!job_headers::is_batch_id(id)) {
        throw std::invalid_argument(
            fmt::format("a batch id is UTF-8 text of 1 to {} bytes without U+0000", job_headers::kMaxBatchIdBytes));
    }
}

}  // namespace

asio::awaitable<std::string> open(pg::Pool& pool, const Opening& opening) {
    if (!opening.id.empty()) {
        check_id(opening.id);
    }
    if (!opening.callback_type.empty() && !is_valid_job_type(opening.callback_type)) {
        throw std::invalid_argument(
            fmt::format("the callback '{}' is not a job type; expected <family>.<action>", opening.callback_type));
    }
    std::string failure;
    bool taken = false;
    try {
        const auto opened = co_await pool.query(
            "INSERT INTO conveyor.batches (id, description, callback_type, callback_payload, opened_by) "
            "SELECT coalesce(nullif($1, ''), 'batch-' || gen_random_uuid()), $2, nullif($3, ''), payload, $5 "
            "FROM (SELECT $4::jsonb AS payload) p "
            "WHERE jsonb_typeof(payload) = 'object' AND conveyor.jsonb_within_depth(payload) RETURNING id",
            opening.id, opening.description, opening.callback_type, opening.callback_payload, opening.opened_by);
        if (opened.rows() == 1) {
            co_return std::string(opened.text(0, 0));
        }
        failure = "the callback payload must be a JSON object, nested at most 32 levels deep";
    } catch (const pg::Error& e) {
        if (e.sqlstate() == kUniqueViolation) {
            failure = fmt::format("a batch {} exists already", opening.id);
            taken = true;
        } else if (e.sqlstate() == kInvalidJson) {
            failure = "the callback payload is not valid JSON";
        } else {
            throw;
        }
    }
    if (taken) {
        throw BatchConflict(failure);
    }
    throw std::invalid_argument(failure);
}

asio::awaitable<void> count_added(pg::Pool& pool, const std::string& batch_id, std::int64_t count) {
    const auto counted = co_await pool.query(
        "UPDATE conveyor.batches SET added = added + $2 WHERE id = $1 AND sealed_at IS NULL RETURNING added", batch_id,
        count);
    if (counted.rows() == 0) {
        const auto batch = co_await find(pool, batch_id);
        if (batch) {
            throw BatchConflict(fmt::format("batch {} is sealed: it takes no more members", batch_id));
        }
        throw NoSuchBatch(fmt::format("no batch {}", batch_id));
    }
}

asio::awaitable<void> seal(pg::Pool& pool, const std::string& batch_id, std::optional<std::int64_t> expected) {
    std::optional<pg::Error> refused;
    try {
        co_await pool.query("SELECT conveyor.seal_batch($1, $2::integer)", batch_id, expected);
    } catch (const pg::Error& e) {
        refused = e;
    }
    if (refused) {
        rethrow_refusal(*refused);
    }
}

boost::json::object to_json(const Batch& batch) {
    boost::json::object counts{{"succeeded", batch.succeeded},
                               {"dead_lettered", batch.dead_lettered},
                               {"cancelled", batch.cancelled},
                               {"deduplicated", batch.deduplicated}};
    const auto* state = !batch.finished_at.empty() ? "finished" : !batch.sealed_at.empty() ? "sealed" : "open";
    return {{"id", batch.id},
            {"state", state},
            {"description", batch.description},
            {"callback_type", batch.callback_type},
            {"opened_at", batch.opened_at},
            {"opened_by", batch.opened_by},
            {"added", batch.added},
            {"expected", batch.expected ? boost::json::value(*batch.expected) : boost::json::value(nullptr)},
            {"total", batch.total()},
            {"ended", batch.ended()},
            {"ended_by_state", std::move(counts)},
            {"sealed_at", batch.sealed_at},
            {"finished_at", batch.finished_at},
            {"callback_job_id", batch.callback_job_id},
            {"callback_error", batch.callback_error}};
}

namespace {

/// The batches `condition` selects (ordered and limited by `tail`), with their members' ends counted.
std::string batches_query(std::string_view condition, std::string_view tail) {
    return fmt::format(
        "SELECT b.id, b.description, coalesce(b.callback_type, ''), {0}, b.opened_by, b.added, "
        "b.expected, coalesce({1}, ''), coalesce({2}, ''), "
        "coalesce(b.callback_job_id::text, ''), coalesce(b.callback_error, ''), "
        "count(m.job_id) FILTER (WHERE m.state = 'succeeded'), count(m.job_id) FILTER (WHERE m.state = "
        "'dead_lettered'), count(m.job_id) FILTER (WHERE m.state = 'cancelled'), "
        "count(m.job_id) FILTER (WHERE m.state = 'deduplicated') "
        "FROM conveyor.batches b LEFT JOIN conveyor.batch_members m ON m.batch_id = b.id WHERE {3} "
        "GROUP BY b.id {4}",
        pg::utc_text("b.opened_at"), pg::utc_text("b.sealed_at"), pg::utc_text("b.finished_at"), condition, tail);
}

Batch batch_of(const pg::Result& rows, int row) {
    return {.id = std::string(rows.text(row, 0)),
            .description = std::string(rows.text(row, 1)),
            .callback_type = std::string(rows.text(row, 2)),
            .opened_at = std::string(rows.text(row, 3)),
            .opened_by = std::string(rows.text(row, 4)),
            .added = rows.integer(row, 5),
            .expected = rows.is_null(row, 6) ? std::nullopt : std::optional(rows.integer(row, 6)),
            .sealed_at = std::string(rows.text(row, 7)),
            .finished_at = std::string(rows.text(row, 8)),
            .callback_job_id = std::string(rows.text(row, 9)),
            .callback_error = std::string(rows.text(row, 10)),
            .succeeded = rows.integer(row, 11),
            .dead_lettered = rows.integer(row, 12),
            .cancelled = rows.integer(row, 13),
            .deduplicated = rows.integer(row, 14)};
}

}  // namespace

asio::awaitable<std::optional<Batch>> find(pg::Pool& pool, const std::string& batch_id) {
    const auto sql = batches_query("b.id = $1", "");  // named: no temporaries inside co_await for g++ 12
    const auto rows = co_await pool.query(sql, batch_id);
    if (rows.rows() == 0) {
        co_return std::nullopt;
    }
    co_return batch_of(rows, 0);
}

asio::awaitable<std::vector<Batch>> recent(pg::Pool& pool, std::int64_t limit) {
    const auto sql = batches_query("b.finished_at IS NULL OR b.finished_at > now() - interval '1 day'",
                                   "ORDER BY b.finished_at IS NULL DESC, b.opened_at DESC LIMIT $1");
    const auto rows = co_await pool.query(sql, limit);
    std::vector<Batch> listed;
    listed.reserve(static_cast<std::size_t>(rows.rows()));
    for (int row = 0; row < rows.rows(); ++row) {
        listed.push_back(batch_of(rows, row));
    }
    co_return listed;
}

asio::awaitable<std::int64_t> record(pg::Pool& pool, const std::vector<MemberEnd>& ends) {
    std::vector<std::string> batch_ids;
    std::vector<std::string> job_ids;
    std::vector<std::string> states;
    for (const auto& end : ends) {
        batch_ids.push_back(end.batch_id);
        job_ids.push_back(end.job_id);
        states.push_back(end.state);
    }
    const auto finished =
        co_await pool.query("SELECT conveyor.record_batch_members($1::text[], $2::text[], $3::text[])",
                            pg::text_array(batch_ids), pg::text_array(job_ids), pg::text_array(states));
    co_return finished.integer(0, 0);
}

}  // namespace conveyor::batches
