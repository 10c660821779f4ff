#pragma once

#include <array>
#include <chrono>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/amqp.hpp"

/// Names from the wire contract (DESIGN.md): one topic exchange, three quorum queues per job family (its priority
/// bands) and a dead-letter queue per family. Plus the delay ladder that retries wait in.
///
/// A topic exchange routes on the routing key alone, so the band is chosen by a headers exchange per family,
/// conveyor.<family>.bands: conveyor.jobs sends it "<family>.#", and it sends x-conveyor-priority high, normal and
/// low to conveyor.<family>.high, conveyor.<family> and conveyor.<family>.low. A job without the header (or with a
/// value it does not know) matches no binding and goes to its alternate exchange, conveyor.<family>.normal, a
/// fanout into conveyor.<family>: the normal band keeps the name the family's queue always had.
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

/// Members of each quorum queue (x-quorum-initial-group-size): three hold a majority through one node's loss, the
/// quorum queue's promise. RabbitMQ places as many as the cluster has nodes when it has fewer (one on a single node);
/// `rabbitmq-queues grow` adds members to queues declared before nodes joined.
inline constexpr std::int64_t kQuorumGroupSize = 3;

/// The job families of the wire contract, in the order the CLI lists them.
[[nodiscard]] const std::vector<std::string>& default_families();

/// A job's priority: the band (queue) of its family it waits in.
enum class Band { high, normal, low };
inline constexpr std::array<Band, 3> kBands{Band::high, Band::normal, Band::low};
/// The header that chooses the band: "high", "normal" or "low"; without it a job is normal.
inline constexpr std::string_view kPriorityHeader = "x-conveyor-priority";
[[nodiscard]] std::string_view band_name(Band band) noexcept;
[[nodiscard]] std::optional<Band> parse_band(std::string_view name) noexcept;

/// The family's normal band, conveyor.<family>.
[[nodiscard]] std::string queue_name(std::string_view family);
[[nodiscard]] std::string queue_name(std::string_view family, Band band);
[[nodiscard]] std::string dead_letter_queue_name(std::string_view family);
/// The family a job queue serves, whatever its band ("conveyor.orders.high" → "orders"); empty if the name is not
/// a job queue.
[[nodiscard]] std::string family_of_queue(std::string_view queue);
/// The band a job queue holds ("conveyor.orders.high" → high); normal for a name without a band's suffix.
[[nodiscard]] Band band_of_queue(std::string_view queue) noexcept;

/// Splits a comma-separated family list and checks each name against the contract; throws
/// std::invalid_argument naming the unknown family.
[[nodiscard]] std::vector<std::string> parse_families(std::string_view list);

/// Exchanges, band queues, dead-letter queues, bindings and the delay ladder for the given families. It removes the
/// bindings of the queues straight to conveyor.jobs and conveyor.delay.due that versions before the bands made.
[[nodiscard]] amqp::Topology job_topology(std::span<const std::string> families,
                                          std::int64_t delivery_limit = kDefaultDeliveryLimit);

}  // namespace conveyor::topology
