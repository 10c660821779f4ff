#include "conveyor/admin/audit.hpp"

#include <fmt/format.h>

#include <boost/json/serialize.hpp>
#include <iostream>

#include "commands.hpp"
#include "conveyor/admin/workers.hpp"
#include "conveyor/cli/cli.hpp"

namespace conveyor::cli {
namespace asio = boost::asio;

void print_audit_entry(const audit::Entry& entry) {
    std::cout << fmt::format("{:<8}  {:<24}  {:<17}  {:<28}  {}{}\n", entry.id, entry.at, entry.action, entry.actor,
                             entry.target, entry.job_count > 1 ? fmt::format(" ({} jobs)", entry.job_count) : "");
}

int audit_list(const AuditOptions& options) {
    options.filter.validate();
    return with_database(options.pg_url, "audit", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto entries = co_await audit::list(pool, options.filter);
        if (options.json) {
            std::cout << boost::json::serialize(audit::to_json(entries, options.filter)) << '\n';
            co_return kOk;
        }
        std::cout << fmt::format("{:<8}  {:<24}  {:<17}  {:<28}  {}\n", "ID", "AT (UTC)", "ACTION", "ACTOR", "TARGET");
        for (const auto& entry : entries) {
            print_audit_entry(entry);
        }
        if (static_cast<std::int64_t>(entries.size()) == options.filter.limit) {
            std::cerr << fmt::format("conveyor audit: more entries match; the next page: --before {}\n",
                                     entries.back().id);
        }
        co_return kOk;
    });
}

int workers_list(const std::string& pg_url, bool json) {
    return with_database(pg_url, "workers", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto listed = co_await workers::list(pool);
        if (json) {
            std::cout << boost::json::serialize(workers::to_json(listed)) << '\n';
            co_return kOk;
        }
        std::cout << fmt::format("{:<28}  {:<8}  {:<8}  {:>9}  {:>12}  {:<24}  {}\n", "NAME", "STATE", "VERSION",
                                 "IN FLIGHT", "SUCCEEDED", "LAST SEEN (UTC)", "QUEUES");
        for (const auto& worker : listed) {
            std::cout << fmt::format("{:<28}  {:<8}  {:<8}  {:>4}/{:<4}  {:>12}  {:<24}  {}\n", worker.identity.name,
                                     worker.state, worker.identity.version, worker.load.in_flight,
                                     worker.identity.concurrency, worker.load.succeeded, worker.last_seen_at,
                                     fmt::join(worker.identity.queues, ","));
        }
        co_return kOk;
    });
}

}  // namespace conveyor::cli
