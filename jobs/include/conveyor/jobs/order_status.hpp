#pragma once

#include <optional>
#include <string_view>

namespace conveyor::jobs {

/// An order's place in the saga: placed → reserved → paid → confirmed; placed or reserved → cancelled (the
/// compensation, which releases the reservation); placed → rejected (stock was short). Every change of an
/// order's status goes through can_transition.
enum class OrderStatus { placed, reserved, paid, confirmed, cancelled, rejected };

[[nodiscard]] std::string_view to_string(OrderStatus status) noexcept;
[[nodiscard]] std::optional<OrderStatus> parse_order_status(std::string_view text) noexcept;
[[nodiscard]] bool can_transition(OrderStatus from, OrderStatus to) noexcept;

}  // namespace conveyor::jobs
