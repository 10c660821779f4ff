#include "conveyor/core/topology.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <random>
#include <stdexcept>

namespace conveyor::topology {

namespace {
constexpr std::string_view kQueuePrefix = "conveyor.";
/// "0." or "1." per level.
constexpr std::size_t kDelayPrefixBytes = std::size_t{2} * kDelayLevels;

/// A topic pattern that matches delay keys by the bit of `level` alone.
std::string level_pattern(unsigned level, char bit) {
    std::string pattern;
    for (unsigned higher = kDelayLevels - 1; higher > level; --higher) {
        pattern += "*.";
    }
    pattern += bit;
    pattern += ".#";
    return pattern;
}

amqp::Headers quorum() {
    return {{"x-queue-type", std::string("quorum")}, {"x-quorum-initial-group-size", kQuorumGroupSize}};
}

void add_delay_ladder(amqp::Topology& topology) {
    for (unsigned level = 0; level < kDelayLevels; ++level) {
        const auto name = delay_level_name(level);
        const auto next = level == 0 ? std::string(kDelayDueExchange) : delay_level_name(level - 1);
        topology.exchanges.push_back({name, "topic"});
        auto arguments = quorum();
        arguments.emplace_back("x-message-ttl", std::int64_t{1000} << level);
        arguments.emplace_back("x-dead-letter-exchange", next);
        // At-least-once dead-lettering keeps a message in the level until the next one has confirmed it, so a
        // broker restart or crash mid-hop cannot lose a waiting retry. It requires reject-publish overflow.
        arguments.emplace_back("x-dead-letter-strategy", std::string("at-least-once"));
        arguments.emplace_back("x-overflow", std::string("reject-publish"));
        topology.queues.push_back({name, std::move(arguments)});
        topology.bindings.push_back({name, name, level_pattern(level, '1')});
        topology.exchange_bindings.push_back({next, name, level_pattern(level, '0')});
    }
    topology.exchanges.push_back({std::string(kDelayDueExchange), "topic"});
}

/// What the delay ladder's due exchange sends on by the job type that follows the delay bits.
std::string due_pattern(std::string_view family) {
    std::string pattern;
    for (unsigned level = 0; level < kDelayLevels; ++level) {
        pattern += "*.";
    }
    return fmt::format("{}{}.#", pattern, family);
}

/// The family's band queues behind its headers exchange, and its dead-letter queue.
void add_family(amqp::Topology& topology, const std::string& family, std::int64_t delivery_limit) {
    const auto bands = fmt::format("{}{}.bands", kQueuePrefix, family);
    const auto unbanded = fmt::format("{}{}.normal", kQueuePrefix, family);
    topology.exchanges.push_back({bands, "headers", {{"alternate-exchange", unbanded}}});
    topology.exchanges.push_back({unbanded, "fanout"});
    topology.exchange_bindings.push_back({bands, std::string(kJobsExchange), family + ".#"});
    topology.exchange_bindings.push_back({bands, std::string(kDelayDueExchange), due_pattern(family)});
    // The broker's backstop against poison messages lives in the queue's arguments rather than a policy: the
    // no-loss guarantee must not depend on an operator applying one. A policy can still lower the limit.
    auto arguments = quorum();
    arguments.emplace_back("x-delivery-limit", delivery_limit);
    arguments.emplace_back("x-dead-letter-exchange", std::string());
    arguments.emplace_back("x-dead-letter-routing-key", dead_letter_queue_name(family));
    arguments.emplace_back("x-dead-letter-strategy", std::string("at-least-once"));
    arguments.emplace_back("x-overflow", std::string("reject-publish"));
    for (const auto band : kBands) {
        const auto queue = queue_name(family, band);
        topology.queues.push_back({queue, arguments});
        // Plain "all" ignores every header whose name starts with "x-", so it would match any message: the header
        // of the contract needs "all-with-x" (RabbitMQ 3.10 and later).
        amqp::Headers match{{"x-match", std::string("all-with-x")},
                            {std::string(kPriorityHeader), std::string(band_name(band))}};
        topology.bindings.push_back({queue, bands, "", std::move(match)});
    }
    topology.bindings.push_back({queue_name(family), unbanded, ""});
    topology.queues.push_back({dead_letter_queue_name(family), quorum()});
    topology.obsolete_bindings.push_back({queue_name(family), std::string(kJobsExchange), family + ".#"});
    topology.obsolete_bindings.push_back({queue_name(family), std::string(kDelayDueExchange), due_pattern(family)});
}

}  // namespace

std::string delay_entry_exchange() {
    return delay_level_name(kDelayLevels - 1);
}

std::string delay_level_name(unsigned level) {
    return fmt::format("conveyor.delay.{}", level);
}

std::string delay_routing_key(std::chrono::milliseconds delay, std::string_view type) {
    const auto rounded_up = std::chrono::ceil<std::chrono::seconds>(delay);
    const auto seconds = static_cast<std::uint64_t>(std::clamp(rounded_up, std::chrono::seconds(1), kMaxDelay).count());
    std::string key;
    key.reserve(kDelayPrefixBytes + type.size());
    for (unsigned level = kDelayLevels; level-- > 0;) {
        key += ((seconds >> level) & 1U) != 0 ? '1' : '0';
        key += '.';
    }
    key += type;
    return key;
}

std::string_view job_type_of_routing_key(std::string_view routing_key) noexcept {
    if (routing_key.size() <= kDelayPrefixBytes) {
        return routing_key;
    }
    for (std::size_t i = 0; i < kDelayPrefixBytes; i += 2) {
        if ((routing_key[i] != '0' && routing_key[i] != '1') || routing_key[i + 1] != '.') {
            return routing_key;
        }
    }
    return routing_key.substr(kDelayPrefixBytes);
}

const std::vector<std::string>& default_families() {
    static const std::vector<std::string> families{"orders", "inventory", "payments", "emails", "projections", "diag"};
    return families;
}

std::string_view band_name(Band band) noexcept {
    switch (band) {
        case Band::high:
            return "high";
        case Band::low:
            return "low";
        case Band::normal:
            break;
    }
    return "normal";
}

std::optional<Band> parse_band(std::string_view name) noexcept {
    for (const auto band : kBands) {
        if (band_name(band) == name) {
            return band;
        }
    }
    return std::nullopt;
}

std::string queue_name(std::string_view family) {
    return fmt::format("{}{}", kQueuePrefix, family);
}

std::string queue_name(std::string_view family, Band band) {
    if (band == Band::normal) {
        return queue_name(family);
    }
    return fmt::format("{}{}.{}", kQueuePrefix, family, band_name(band));
}

std::string dead_letter_queue_name(std::string_view family) {
    return fmt::format("{}{}.dlq", kQueuePrefix, family);
}

std::string family_of_queue(std::string_view queue) {
    if (!queue.starts_with(kQueuePrefix)) {
        return {};
    }
    auto family = queue.substr(kQueuePrefix.size());
    if (const auto dot = family.find('.'); dot != std::string_view::npos) {
        const auto band = parse_band(family.substr(dot + 1));
        if (!band || *band == Band::normal) {
            return {};
        }
        family = family.substr(0, dot);
    }
    return family.empty() ? std::string() : std::string(family);
}

Band band_of_queue(std::string_view queue) noexcept {
    const auto dot = queue.rfind('.');
    const auto band = dot == std::string_view::npos ? std::nullopt : parse_band(queue.substr(dot + 1));
    return band.value_or(Band::normal);
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

amqp::QueueSpec control_queue(std::string_view worker_name) {
    // Unique per process: two workers given the same --name must not share (or steal) each other's commands.
    thread_local std::mt19937_64 generator{std::random_device{}()};
    return {.name = fmt::format("conveyor.control.{}.{:016x}", worker_name, generator()),
            .arguments = {},
            .exclusive = true,
            .renamed_per_connection = true};
}

amqp::Topology job_topology(std::span<const std::string> families, std::int64_t delivery_limit) {
    amqp::Topology topology;
    topology.exchanges.push_back({std::string(kJobsExchange), "topic"});
    topology.exchanges.push_back({std::string(kControlExchange), "fanout"});
    add_delay_ladder(topology);
    for (const auto& family : families) {
        add_family(topology, family, delivery_limit);
    }
    return topology;
}

}  // namespace conveyor::topology
