#include <fmt/format.h>

#include <boost/json/serialize.hpp>
#include <fstream>
#include <iostream>
#include <sstream>

#include "commands.hpp"
#include "conveyor/cli/cli.hpp"
#include "conveyor/core/flow_config.hpp"

namespace conveyor::cli {
namespace asio = boost::asio;

namespace {

void print_limits(const flow::FlowConfig& config) {
    if (config.jobs.empty()) {
        std::cout << "no limits: every job runs as soon as a worker takes it\n";
        return;
    }
    std::cout << fmt::format("{:<28}  {}\n", "JOB TYPE", "LIMITS");
    for (const auto& [type, limits] : config.jobs) {
        if (limits.concurrency) {
            std::cout << fmt::format("{:<28}  at most {} running per {} (across all workers)\n", type,
                                     limits.concurrency->limit, limits.concurrency->key_pointer);
        }
        if (limits.rate) {
            const auto& rate = *limits.rate;
            std::cout << fmt::format(
                "{:<28}  at most {} starts a second{}, bursts of up to {} (across all workers)\n", type,
                rate.per_second, rate.key_pointer.empty() ? "" : fmt::format(" per {}", rate.key_pointer), rate.burst);
        }
    }
}

}  // namespace

int flow_apply(const FlowApplyOptions& options) {
    std::ifstream file(options.file);
    if (!file) {
        std::cerr << fmt::format("conveyor flow apply: cannot read {}\n", options.file);
        return kUsage;
    }
    std::stringstream text;
    text << file.rdbuf();
    const auto source = text.str();
    const auto config = flow::parse(source, options.file);  // std::invalid_argument: the line, and nothing stored
    if (options.dry_run) {
        if (options.json) {
            std::cout << boost::json::serialize(boost::json::object{{"valid", true}, {"limits", flow::to_json(config)}})
                      << '\n';
        } else {
            std::cout << fmt::format("{} is valid (--dry-run: nothing applied)\n", options.file);
            print_limits(config);
        }
        return kOk;
    }
    return with_database(options.pg_url, "flow apply", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto stored = co_await flow::apply(pool, source, operator_name());
        if (options.json) {
            std::cout << boost::json::serialize(boost::json::object{{"version", stored.version},
                                                                    {"changed", stored.changed},
                                                                    {"limits", flow::to_json(config)}})
                      << '\n';
        } else if (stored.changed) {
            std::cout << fmt::format("applied {} as version {}; every worker has it within a few seconds\n",
                                     options.file, stored.version);
            print_limits(config);
        } else {
            std::cout << fmt::format("{} is version {} already, in force; nothing changed\n", options.file,
                                     stored.version);
        }
        co_return kOk;
    });
}

int flow_show(const std::string& pg_url, bool json) {
    return with_database(pg_url, "flow show", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto applied = co_await flow::newest(pool);
        if (!applied) {
            if (json) {
                std::cout << boost::json::serialize(boost::json::object{{"version", 0}, {"limits", flow::to_json({})}})
                          << '\n';
            } else {
                std::cout << "no flow limits applied yet (conveyor flow apply FILE)\n";
            }
            co_return kOk;
        }
        const auto config = flow::parse(applied->source, fmt::format("version {}", applied->version));
        if (json) {
            std::cout << boost::json::serialize(flow::to_json(*applied, config)) << '\n';
            co_return kOk;
        }
        std::cout << fmt::format("version {}, applied {} by {}\n", applied->version, applied->applied_at,
                                 applied->applied_by);
        print_limits(config);
        co_return kOk;
    });
}

}  // namespace conveyor::cli
