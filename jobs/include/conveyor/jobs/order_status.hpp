#pragma once

#include <optional>
#include <string_view>

namespace conveyor::jobs {

/// An order's place in the saga: placed (waiting for inventory) → reserved → paid → confirmed; placed or reserved →
/// cancelled (the compensation: inventory releases what it holds); paid or confirmed → refunding (stock released,
/// the charge being refunded) → refunded; placed → rejected (inventory was short). Confirmed, cancelled, rejected and
/// refunded are where a saga ends (a confirmed order may still be cancelled). Every change of an order's status goes
/// through can_transition.
enum class OrderStatus { placed, reserved, paid, confirmed, cancelled, rejected, refunding, refunded };

[[nodiscard]] std::string_view to_string(OrderStatus status) noexcept;
[[nodiscard]] std::optional<OrderStatus> parse_order_status(std::string_view text) noexcept;
[[nodiscard]] bool can_transition(OrderStatus from, OrderStatus to) noexcept;
/// Whether the saga has ended for an order in `status`: nothing more happens to it unless someone cancels it.
[[nodiscard]] bool is_settled(OrderStatus status) noexcept;

}  // namespace conveyor::jobs
