#include "enqueue_batch.hpp"

#include <fmt/format.h>

namespace conveyor::scheduler {
namespace asio = boost::asio;

namespace {

// Requests in one batch at most: a batch of single-job requests is one statement of this many rows, and a request
// may hold up to 1,000 jobs.
constexpr std::size_t kMaxRequests = 256;

/// conveyor.enqueue() for each row, with the request each row belongs to; the parameters are text arrays, one per
/// column, in the order of columns() below.
constexpr std::string_view kEnqueue =
    "SELECT j.request, conveyor.enqueue(j.type, j.payload::jsonb, "
    "coalesce(nullif(j.run_at, '')::timestamptz, now()), nullif(j.key, ''), nullif(j.correlation, ''), "
    "nullif(j.traceparent, ''), j.source, coalesce(nullif(j.priority, ''), 'normal'), nullif(j.unique_key, ''), "
    "coalesce(nullif(j.unique_for, '')::integer, 0), nullif(j.batch, '')) "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], "
    "$9::text[], $10::text[], $11::text[], $12::integer[]) WITH ORDINALITY "
    "AS j(type, payload, run_at, key, correlation, traceparent, source, priority, unique_key, unique_for, batch, "
    "request, n) ORDER BY j.n";

/// The statement's parameters for the jobs of `requests`, numbered from 0 in the request column.
std::vector<pg::Param> columns(std::span<const EnqueueBatches::Request> requests) {
    std::vector<std::vector<std::string_view>> values(11);
    std::vector<std::string> request_numbers;
    for (std::size_t r = 0; r < requests.size(); ++r) {
        for (const auto& job : requests[r].jobs) {
            const std::string_view fields[] = {
                job.type,           job.payload,     job.run_at,         job.idempotency_key,
                job.correlation_id, job.traceparent, requests[r].source, job.priority,
                job.unique_key,     job.unique_for,  job.batch};
            for (std::size_t column = 0; column < values.size(); ++column) {
                values[column].push_back(fields[column]);
            }
            request_numbers.push_back(std::to_string(r));
        }
    }
    std::vector<pg::Param> params;
    for (const auto& column : values) {
        params.emplace_back(pg::text_array(column));
    }
    params.emplace_back(pg::text_array(request_numbers));
    return params;
}

}  // namespace

EnqueueBatches::EnqueueBatches(pg::Pool& pool) : pool_(pool), calls_(kMaxRequests) {}

asio::awaitable<std::vector<std::string>> EnqueueBatches::enqueue(Request request) {
    auto reply = co_await calls_.call(std::move(request));
    if (reply.failure) {
        std::rethrow_exception(reply.failure);
    }
    co_return std::move(reply.ids);
}

asio::awaitable<void> EnqueueBatches::serve() {
    co_await calls_.serve([this](std::vector<Request>& batch) { return write(batch); });
}

asio::awaitable<std::vector<EnqueueBatches::Reply>> EnqueueBatches::write(std::vector<Request>& batch) {
    std::exception_ptr failure;
    try {
        auto replies = co_await write_together(batch);
        co_return replies;
    } catch (const pg::Error& e) {
        failure = std::current_exception();
        if (e.sqlstate().starts_with("08")) {
            throw;  // the connection is gone: every request of the batch fails alike
        }
    }
    if (batch.size() == 1) {
        co_return std::vector<Reply>{Reply{{}, failure}};
    }
    auto replies = co_await write_one_by_one(batch);
    co_return replies;
}

asio::awaitable<std::vector<EnqueueBatches::Reply>> EnqueueBatches::write_together(const std::vector<Request>& batch) {
    auto writing = pool_.query_params(std::string(kEnqueue), columns(batch));  // named: no temporaries in co_await
    auto rows = co_await std::move(writing);
    std::vector<Reply> replies(batch.size());
    for (int row = 0; row < rows.rows(); ++row) {
        replies.at(static_cast<std::size_t>(rows.integer(row, 0))).ids.emplace_back(rows.text(row, 1));
    }
    co_return replies;
}

asio::awaitable<std::vector<EnqueueBatches::Reply>> EnqueueBatches::write_one_by_one(
    const std::vector<Request>& batch) {
    std::vector<Reply> replies(batch.size());
    auto transaction = co_await pool_.begin();
    for (std::size_t r = 0; r < batch.size(); ++r) {
        co_await transaction.run_script("SAVEPOINT request");
        bool refused = false;
        try {
            auto writing = transaction.query_params(std::string(kEnqueue), columns({&batch[r], 1}));
            auto rows = co_await std::move(writing);
            for (int row = 0; row < rows.rows(); ++row) {
                replies[r].ids.emplace_back(rows.text(row, 1));
            }
        } catch (const pg::Error& e) {
            if (e.sqlstate().starts_with("08")) {
                throw;
            }
            replies[r].failure = std::current_exception();
            refused = true;
        }
        std::string end_of_request =
            refused ? "ROLLBACK TO SAVEPOINT request; RELEASE SAVEPOINT request" : "RELEASE SAVEPOINT request";
        co_await transaction.run_script(std::move(end_of_request));
    }
    co_await transaction.commit();
    co_return replies;
}

}  // namespace conveyor::scheduler
