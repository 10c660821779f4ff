#include "waiting_line.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "conveyor/admin/dead_letters.hpp"
#include "conveyor/core/header_json.hpp"
#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::worker::waiting_line {
namespace asio = boost::asio;

namespace {
// Released jobs published per transaction.
constexpr int kPublishChunk = 500;
}  // namespace

amqp::Message stored_message(const pg::Result& rows, int row) {
    amqp::Message message;
    message.exchange = topology::kJobsExchange;
    message.routing_key = rows.text(row, 1);
    message.properties = amqp::properties_from_json(rows.text(row, 2));
    message.body = dead_letters::decode_body(rows.text(row, 3));
    return message;
}

asio::awaitable<bool> publish_released(pg::Pool& pool, amqp::Connection& publisher, std::string_view table,
                                       std::string_view to_publish, std::string_view limit,
                                       std::chrono::milliseconds timeout) {
    const auto select = fmt::format(
        "SELECT id, job_type, properties::text, encode(body, 'hex') FROM {} WHERE released_at IS NOT NULL AND ({}) "
        "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        table, to_publish);
    const auto remove = fmt::format("DELETE FROM {} WHERE id = ANY($1::bigint[])", table);
    auto transaction = co_await pool.begin();
    const auto rows = co_await transaction.query(select, kPublishChunk);
    if (rows.rows() == 0) {
        co_return false;
    }
    std::vector<amqp::Message> messages;
    for (int row = 0; row < rows.rows(); ++row) {
        auto message = stored_message(rows, row);
        amqp::set_header(message.properties.headers, job_headers::kPromised, std::string(limit));
        messages.push_back(std::move(message));
    }
    const auto errors = co_await amqp::publish_all(publisher, std::move(messages), timeout);
    std::vector<std::string> ids;
    std::string failure;
    for (int row = 0; row < rows.rows(); ++row) {
        if (errors[static_cast<std::size_t>(row)]) {
            failure = errors[static_cast<std::size_t>(row)].message();
            continue;
        }
        ids.emplace_back(rows.text(row, 0));
    }
    co_await transaction.query(remove, pg::text_array(ids));
    co_await transaction.commit();
    if (!failure.empty()) {
        spdlog::warn("{} limits: could not publish {} released jobs ({}); they stay in line", limit,
                     static_cast<std::size_t>(rows.rows()) - ids.size(), failure);
        co_return false;
    }
    co_return true;
}

}  // namespace conveyor::worker::waiting_line
