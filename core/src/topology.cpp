#include "conveyor/core/topology.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace conveyor::topology {

namespace {
constexpr std::string_view kQueuePrefix = "conveyor.";
}

const std::vector<std::string>& default_families() {
    static const std::vector<std::string> families{"orders", "payments", "emails", "projections", "diag"};
    return families;
}

std::string queue_name(std::string_view family) {
    return fmt::format("{}{}", kQueuePrefix, family);
}

std::string dead_letter_queue_name(std::string_view family) {
    return fmt::format("{}{}.dlq", kQueuePrefix, family);
}

std::string family_of_queue(std::string_view queue) {
    if (!queue.starts_with(kQueuePrefix)) {
        return {};
    }
    const auto family = queue.substr(kQueuePrefix.size());
    return family.find('.') == std::string_view::npos ? std::string(family) : std::string();
}

std::vector<std::string> parse_families(std::string_view list) {
    std::vector<std::string> families;
    while (!list.empty()) {
        const auto comma = list.find(',');
        auto name = list.substr(0, comma);
        while (!name.empty() && name.front() == ' ') {
            name.remove_prefix(1);
        }
        while (!name.empty() && name.back() == ' ') {
            name.remove_suffix(1);
        }
        if (!name.empty()) {
            const auto& known = default_families();
            if (std::find(known.begin(), known.end(), name) == known.end()) {
                throw std::invalid_argument(
                    fmt::format("unknown job family '{}' (known: {})", name, fmt::join(known, ", ")));
            }
            if (std::find(families.begin(), families.end(), name) == families.end()) {
                families.emplace_back(name);
            }
        }
        list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    }
    if (families.empty()) {
        throw std::invalid_argument("no job family given");
    }
    return families;
}

amqp::Topology job_topology(std::span<const std::string> families) {
    amqp::Topology topology;
    topology.exchanges.push_back({std::string(kJobsExchange), "topic"});
    for (const auto& family : families) {
        // Only the queue type is fixed at declaration: quorum queues cannot change arguments later, so
        // limits such as delivery-limit or dead-lettering belong in policies that can evolve.
        topology.queues.push_back({queue_name(family), {{"x-queue-type", std::string("quorum")}}});
        topology.queues.push_back({dead_letter_queue_name(family), {{"x-queue-type", std::string("quorum")}}});
        topology.bindings.push_back({queue_name(family), std::string(kJobsExchange), family + ".#"});
    }
    return topology;
}

}  // namespace conveyor::topology
