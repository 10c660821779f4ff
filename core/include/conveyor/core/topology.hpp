#pragma once

#include <chrono>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/amqp.hpp"

/// Names from the wire contract (DESIGN.md): one topic exchange, a quorum queue per job family bound by
/// "<family>.#", and a dead-letter queue per family. Plus the delay ladder that retries wait in.
///
/// The delay ladder holds a message for a whole number of seconds, up to kMaxDelay, without a broker plugin:
/// level L is a quorum queue whose messages all live exactly 2^L seconds and then dead-letter onward. A delayed
/// message's routing key spells its delay in binary, "b21.b20.….b0.<job type>"; the exchange of level L sends it
/// into the level's queue if bit L is set and on to level L-1 if not, so it waits in exactly the levels whose
/// bits make up its delay. Every queue of a level holds one TTL, so the head of each queue is always the next
/// message due: a 30-day delay never holds up a 1-second one. Out of level 0, conveyor.delay.due routes the
/// message by the job type that follows the bits back to its family's queue.
namespace conveyor::topology {

inline constexpr std::string_view kJobsExchange = "conveyor.jobs";

inline constexpr unsigned kDelayLevels = 22;
/// 2^22 - 1 seconds, about 48.5 days.
inline constexpr std::chrono::seconds kMaxDelay{(1U << kDelayLevels) - 1};
/// Where delayed messages are published: the exchange of the highest level.
[[nodiscard]] std::string delay_entry_exchange();
[[nodiscard]] std::string delay_level_name(unsigned level);
inline constexpr std::string_view kDelayDueExchange = "conveyor.delay.due";

/// Fleet-wide commands (job_control): a fanout exchange every worker binds a queue of its own to.
inline constexpr std::string_view kControlExchange = "conveyor.control";
/// A worker's queue on the control exchange: exclusive to its connection and gone with it.
[[nodiscard]] amqp::QueueSpec control_queue(std::string_view worker_name);

/// The routing key that makes the ladder hold a message of `type` for `delay`, rounded up to whole seconds and
/// clamped to 1 s … kMaxDelay.
[[nodiscard]] std::string delay_routing_key(std::chrono::milliseconds delay, std::string_view type);
/// The job type in a routing key: the key itself, or what follows the delay bits of one that came through the
/// ladder.
[[nodiscard]] std::string_view job_type_of_routing_key(std::string_view routing_key) noexcept;

/// Deliveries after which the broker itself dead-letters a job (x-delivery-limit): a backstop for poison
/// messages that get past the worker's own quarantine. Requeues at shutdown and after crashes count too, so it
/// sits well above the quarantine's bound.
inline constexpr std::int64_t kDefaultDeliveryLimit = 20;

/// The job families of the wire contract, in the order the CLI lists them.
[[nodiscard]] const std::vector<std::string>& default_families();

[[nodiscard]] std::string queue_name(std::string_view family);
[[nodiscard]] std::string dead_letter_queue_name(std::string_view family);
/// The family a job queue serves ("conveyor.orders" → "orders"); empty if the name is not a job queue.
[[nodiscard]] std::string family_of_queue(std::string_view queue);

/// Splits a comma-separated family list and checks each name against the contract; throws
/// std::invalid_argument naming the unknown family.
[[nodiscard]] std::vector<std::string> parse_families(std::string_view list);

/// Exchange, queues, dead-letter queues, bindings and the delay ladder for the given families.
[[nodiscard]] amqp::Topology job_topology(std::span<const std::string> families,
                                          std::int64_t delivery_limit = kDefaultDeliveryLimit);

}  // namespace conveyor::topology
