#include "conveyor/core/batches.hpp"

#include <fmt/format.h>

#include <boost/json/serialize.hpp>
#include <iostream>

#include "commands.hpp"
#include "conveyor/cli/cli.hpp"

namespace conveyor::cli {
namespace asio = boost::asio;

namespace {

void print_batch(const batches::Batch& batch) {
    const auto total = batch.total();
    const double percent = total > 0 ? 100.0 * static_cast<double>(batch.ended()) / static_cast<double>(total) : 0;
    std::cout << fmt::format("batch {}{}\n", batch.id, batch.description.empty() ? "" : " - " + batch.description);
    std::cout << fmt::format("  opened    {} by {}\n", batch.opened_at, batch.opened_by);
    if (batch.sealed_at.empty()) {
        std::cout << fmt::format("  open      {} members added so far; seal it when all are added\n", batch.added);
    } else {
        std::cout << fmt::format("  sealed    {}, {} members in all\n", batch.sealed_at, total);
    }
    std::cout << fmt::format(
        "  ended     {} of {} ({:.1f}%): {} succeeded, {} dead-lettered, {} cancelled, {} "
        "deduplicated\n",
        batch.ended(), total, percent, batch.succeeded, batch.dead_lettered, batch.cancelled, batch.deduplicated);
    if (!batch.finished_at.empty()) {
        std::cout << fmt::format("  finished  {}{}{}\n", batch.finished_at,
                                 batch.callback_job_id.empty() ? "" : ", callback job " + batch.callback_job_id,
                                 batch.callback_error.empty() ? "" : ", no callback: " + batch.callback_error);
    } else if (!batch.callback_type.empty()) {
        std::cout << fmt::format("  callback  {} once every member has ended after the seal\n", batch.callback_type);
    }
}

}  // namespace

int batches_open(const BatchOptions& options) {
    return with_database(options.pg_url, "batches open", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto id = co_await batches::open(pool, {.id = options.id,
                                                      .description = options.description,
                                                      .callback_type = options.callback_type,
                                                      .callback_payload = options.callback_payload,
                                                      .opened_by = operator_name()});
        if (options.json) {
            std::cout << boost::json::serialize(boost::json::object{{"id", id}}) << '\n';
        } else {
            std::cout << id << '\n';
        }
        co_return kOk;
    });
}

int batches_seal(const BatchOptions& options) {
    return with_database(options.pg_url, "batches seal", [&](pg::Pool& pool) -> asio::awaitable<int> {
        co_await batches::seal(pool, options.id, options.expected);
        const auto batch = co_await batches::find(pool, options.id);
        if (options.json) {
            std::cout << boost::json::serialize(batches::to_json(*batch)) << '\n';
        } else {
            print_batch(*batch);
        }
        co_return kOk;
    });
}

int batches_show(const BatchOptions& options) {
    return with_database(options.pg_url, "batches show", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto batch = co_await batches::find(pool, options.id);
        if (!batch) {
            std::cerr << fmt::format("conveyor batches show: no batch {}\n", options.id);
            co_return kUsage;
        }
        if (options.json) {
            std::cout << boost::json::serialize(batches::to_json(*batch)) << '\n';
        } else {
            print_batch(*batch);
        }
        co_return kOk;
    });
}

int count_batch_members(const EnqueueOptions& options, std::int64_t count) {
    return with_database(options.pg_url, "enqueue", [&](pg::Pool& pool) -> asio::awaitable<int> {
        co_await batches::count_added(pool, options.batch, count);
        co_return kOk;
    });
}

}  // namespace conveyor::cli
