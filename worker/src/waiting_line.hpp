#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <string_view>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/pg.hpp"

/// The waiting lines of the flow limits: jobs a limit holds back wait as rows in PostgreSQL (acknowledged on the
/// broker), and a job the limit lets go is marked released and published again to its queue from here.
namespace conveyor::worker::waiting_line {

/// The message of a job in a waiting line, as it arrived, from a row whose columns 1 to 3 are job_type, properties
/// (JSON text) and body (hex): addressed to the jobs exchange with its type as routing key.
[[nodiscard]] amqp::Message stored_message(const pg::Result& rows, int row);

/// Publishes one chunk of the released jobs of `table` (conveyor.concurrency_waiting or conveyor.rate_waiting) to the
/// jobs exchange and deletes those the broker confirmed, in one transaction whose rows no other worker publishes
/// meanwhile. `limit` names the limit in the log and in the header kPromised of each job; `to_publish` is the SQL
/// condition a released row meets if it is to be published (not one a worker took straight from the line). False
/// when there were none, or some could not be published (they stay, released, for the next call). Throws pg::Error.
boost::asio::awaitable<bool> publish_released(pg::Pool& pool, amqp::Connection& publisher, std::string_view table,
                                              std::string_view to_publish, std::string_view limit,
                                              std::chrono::milliseconds timeout);

}  // namespace conveyor::worker::waiting_line
