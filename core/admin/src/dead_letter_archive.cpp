#include <fmt/format.h>

#include <algorithm>
#include <boost/json/serialize.hpp>
#include <regex>
#include <set>

#include "conveyor/admin/dead_letters.hpp"
#include "conveyor/admin/fingerprint.hpp"
#include "conveyor/core/config.hpp"
#include "conveyor/core/envelope.hpp"
#include "conveyor/core/header_json.hpp"
#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/topology.hpp"
#include "conveyor/core/utf8.hpp"
#include "date/date.h"

namespace conveyor::dead_letters {
namespace asio = boost::asio;

namespace {

/// A header's failure time if it is an RFC 3339 UTC time PostgreSQL reads as such, else now: one malformed header
/// must not make the whole batch's INSERT fail, again and again.
std::string failure_time(const std::string& text) {
    static const std::regex kUtcTime(R"((\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?Z)");
    std::smatch parts;
    if (std::regex_match(text, parts, kUtcTime)) {
        auto number = [&parts](std::size_t part) { return std::stoi(parts[part].str()); };
        const date::year_month_day day{date::year{number(1)}, date::month{static_cast<unsigned>(number(2))},
                                       date::day{static_cast<unsigned>(number(3))}};
        if (day.ok() && number(1) >= 1970 && number(4) < 24 && number(5) < 60 && number(6) < 60) {
            return text;
        }
    }
    return utc_timestamp(std::chrono::system_clock::now());
}

/// Where the job was published to: Conveyor's header when the worker dead-lettered it, else the first routing key
/// in the broker's x-death that names a job type (the delay ladder's keys carry a prefix), else the delivery's.
std::string original_routing_key(const amqp::Message& message) {
    if (auto routing_key = job_headers::read_failure(message.properties.headers).original_routing_key;
        !routing_key.empty()) {
        return utf8::postgres_text(routing_key);
    }
    for (const auto& death : message.properties.deaths) {
        for (const auto& key : death.routing_keys) {
            if (is_valid_job_type(topology::job_type_of_routing_key(key))) {
                return utf8::postgres_text(topology::job_type_of_routing_key(key));
            }
        }
    }
    return utf8::postgres_text(message.routing_key);
}

/// One dead letter's columns, in the order of the INSERT below.
struct Row {
    std::array<std::string, 15> columns;
};

Row row_of(const amqp::Delivery& delivery) {
    const auto& message = delivery.message;
    const auto& headers = message.properties.headers;
    const auto routing_key = original_routing_key(message);
    auto type = std::string(topology::job_type_of_routing_key(routing_key));
    if (type.empty()) {
        type = "unknown";
    }
    const std::string_view queue = delivery.queue;
    const auto job_queue = queue.substr(0, queue.rfind(".dlq"));
    auto family = topology::family_of_queue(job_queue);
    // A message the worker dead-lettered carries its reason; one the broker dead-lettered (at the queue's delivery
    // limit: a job that kept killing its workers; or expired) has the broker's reason in x-death; anything else was
    // published straight into the DLQ.
    const auto failure = job_headers::read_failure(headers);
    auto reason = utf8::postgres_text(failure.reason);
    if (reason.empty()) {
        const auto& deaths = message.properties.deaths;
        reason = deaths.empty() || deaths.front().reason.empty() ? std::string("unknown")
                                                                 : utf8::postgres_text(deaths.front().reason);
    }
    const auto error = utf8::postgres_text(failure.error);
    const auto failed_at = failure_time(utf8::postgres_text(failure.failed_at));
    const auto pattern = error_pattern(error);
    const auto job_id = utf8::postgres_text(message.properties.message_id);
    // The same message delivered twice has the same key; the same job dead-lettered again later does not.
    const auto archive_key = error_fingerprint(fmt::format("{}\n{}\n{}\n{}", queue, job_id, failure.failed_at,
                                                           error_fingerprint(message.body))) +
                             ":" + job_id.substr(0, 100);
    Row row;
    row.columns = {job_id,
                   type,
                   family.empty() ? std::string("unknown") : family,
                   std::string(queue),
                   routing_key,
                   reason,
                   error,
                   pattern,
                   error_fingerprint(pattern),
                   std::to_string(std::min<std::uint32_t>(failure.attempts, INT32_MAX)),
                   failed_at,
                   utf8::postgres_text(message.properties.correlation_id),
                   boost::json::serialize(amqp::headers_to_json(headers)),
                   pg::bytea_literal(message.body),
                   archive_key};
    return row;
}

}  // namespace

asio::awaitable<void> archive(pg::Pool& pool, const amqp::DeliveryBatch& batch) {
    std::array<std::vector<std::string>, 15> columns;
    // Copies of one message in one batch would make the statement update its own row twice: store one.
    std::set<std::string> keys;
    for (const auto& delivery : batch) {
        auto row = row_of(delivery);
        if (!keys.insert(row.columns.back()).second) {
            continue;
        }
        for (std::size_t i = 0; i < columns.size(); ++i) {
            columns[i].push_back(std::move(row.columns[i]));
        }
    }
    std::vector<pg::Param> params;
    params.reserve(columns.size());
    for (const auto& column : columns) {
        params.emplace_back(pg::text_array(column));
    }
    auto transaction = co_await pool.begin();
    // Named: no temporaries inside co_await for g++ 12.
    std::string insert(
        "INSERT INTO conveyor.dead_letters (job_id, type, family, queue, routing_key, reason, error, error_pattern, "
        "fingerprint, attempts, failed_at, correlation_id, headers, body, archive_key) "
        "SELECT job_id, type, family, queue, routing_key, reason, error, error_pattern, fingerprint, attempts::int, "
        "failed_at::timestamptz, nullif(correlation_id, ''), headers::jsonb, body::bytea, archive_key "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], "
        "$9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[]) "
        "AS d(job_id, type, family, queue, routing_key, reason, error, error_pattern, fingerprint, attempts, "
        "failed_at, correlation_id, headers, body, archive_key) "
        // The same message again is a no-op; a replayed dead letter that failed the same way again (the broker's
        // delivery limit sets no failure time, so its key repeats) is dead again.
        "ON CONFLICT (archive_key) DO UPDATE SET state = 'dead', archived_at = now(), failed_at = excluded.failed_at "
        "WHERE dead_letters.state = 'replayed'");
    co_await transaction.query_params(std::move(insert), std::move(params));
    // A unique job the broker dead-lettered on its own (at the delivery limit) never reached a worker's settle: its
    // key's window starts here, or the key would stay held. The worker started it already for the ones it
    // dead-lettered itself (held_until is set).
    const auto job_ids = pg::text_array(columns[0]);
    const auto types = pg::text_array(columns[1]);
    const auto headers = pg::text_array(columns[12]);
    co_await transaction.query(
        "UPDATE conveyor.unique_keys AS held SET held_until = now() + make_interval(secs => d.unique_for) "
        "FROM (SELECT job_id, type, h ->> 'x-conveyor-unique-key' AS unique_key, "
        "CASE WHEN h ->> 'x-conveyor-unique-for' ~ '^[0-9]{1,9}$' THEN (h ->> 'x-conveyor-unique-for')::int "
        "ELSE 0 END AS unique_for FROM unnest($1::text[], $2::text[], $3::text[]) AS u(job_id, type, headers), "
        "LATERAL (SELECT u.headers::jsonb AS h) AS parsed) AS d "
        "WHERE held.job_type = d.type AND held.unique_key = d.unique_key AND held.job_id = d.job_id "
        "AND held.held_until IS NULL",
        job_ids, types, headers);
    // Likewise a batch member: it has ended, dead-lettered (recording one a worker recorded already changes nothing).
    co_await transaction.query(
        "SELECT conveyor.record_batch_members(array_agg(d.batch_id), array_agg(d.job_id), "
        "array_agg('dead_lettered'::text)) FROM (SELECT u.job_id, u.headers::jsonb ->> 'x-conveyor-batch' AS batch_id "
        "FROM unnest($1::text[], $2::text[]) AS u(job_id, headers)) AS d WHERE d.batch_id IS NOT NULL",
        job_ids, headers);
    co_await transaction.commit();
}

}  // namespace conveyor::dead_letters
