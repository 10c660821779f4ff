#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/amqp.hpp"

/// Names from the wire contract (DESIGN.md): one topic exchange, a quorum queue per job family bound by
/// "<family>.#", and a dead-letter queue per family.
namespace conveyor::topology {

inline constexpr std::string_view kJobsExchange = "conveyor.jobs";

/// The job families of the wire contract, in the order the CLI lists them.
[[nodiscard]] const std::vector<std::string>& default_families();

[[nodiscard]] std::string queue_name(std::string_view family);
[[nodiscard]] std::string dead_letter_queue_name(std::string_view family);
/// The family a job queue serves ("conveyor.orders" → "orders"); empty if the name is not a job queue.
[[nodiscard]] std::string family_of_queue(std::string_view queue);

/// Splits a comma-separated family list and checks each name against the contract; throws
/// std::invalid_argument naming the unknown family.
[[nodiscard]] std::vector<std::string> parse_families(std::string_view list);

/// Exchange, queues, dead-letter queues and bindings for the given families.
[[nodiscard]] amqp::Topology job_topology(std::span<const std::string> families);

}  // namespace conveyor::topology
