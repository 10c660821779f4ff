#include "order_store.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>

#include "../common/payload.hpp"
#include "conveyor/core/job_headers.hpp"

namespace conveyor::jobs {

namespace {

constexpr std::array kStatusNames{std::string_view("placed"),    std::string_view("reserved"),
                                  std::string_view("paid"),      std::string_view("confirmed"),
                                  std::string_view("cancelled"), std::string_view("rejected"),
                                  std::string_view("refunding"), std::string_view("refunded")};

}  // namespace

std::string_view to_string(OrderStatus status) noexcept {
    return kStatusNames.at(static_cast<std::size_t>(status));
}

std::optional<OrderStatus> parse_order_status(std::string_view text) noexcept {
    const auto found = std::find(kStatusNames.begin(), kStatusNames.end(), text);
    if (found == kStatusNames.end()) {
        return std::nullopt;
    }
    return static_cast<OrderStatus>(found - kStatusNames.begin());
}

bool can_transition(OrderStatus from, OrderStatus to) noexcept {
    using enum OrderStatus;
    switch (from) {
        case placed:
            return to == reserved || to == rejected || to == cancelled;
        case reserved:
            return to == paid || to == cancelled;
        case paid:
            return to == confirmed || to == refunding;
        case confirmed:
            return to == refunding;
        case refunding:
            return to == refunded;
        case cancelled:
        case rejected:
        case refunded:
            return false;
    }
    return false;
}

bool is_settled(OrderStatus status) noexcept {
    using enum OrderStatus;
    return status == confirmed || status == cancelled || status == rejected || status == refunded;
}

boost::asio::awaitable<std::optional<LockedOrder>> lock_order(pg::Transaction& transaction, std::string_view order_id) {
    const auto row = co_await transaction.query(
        "SELECT o.status, o.version, o.customer_id, c.email, coalesce(c.name, ''), o.currency, o.total_cents, "
        "  o.archived_at IS NOT NULL "
        "FROM shop.orders o JOIN shop.customers c ON c.id = o.customer_id WHERE o.id = $1 FOR UPDATE OF o",
        order_id);
    if (row.rows() == 0) {
        co_return std::nullopt;
    }
    LockedOrder order;
    order.id = std::string(order_id);
    order.status = parse_order_status(row.text(0, 0)).value_or(OrderStatus::placed);
    order.version = row.integer(0, 1);
    order.customer_id = std::string(row.text(0, 2));
    order.customer_email = std::string(row.text(0, 3));
    order.customer_name = std::string(row.text(0, 4));
    order.currency = std::string(row.text(0, 5));
    order.total_cents = row.integer(0, 6);
    order.archived = row.text(0, 7) == "t";
    co_return order;
}

boost::asio::awaitable<std::vector<std::int64_t>> advance_order(pg::Transaction& transaction, LockedOrder& order,
                                                                OrderStatus to, std::string_view reason,
                                                                const std::vector<DomainEvent>& events) {
    if (order.archived) {
        throw PermanentError(fmt::format("order {} is archived (its month is closed): it changes no more", order.id));
    }
    if (to != order.status && !can_transition(order.status, to)) {
        throw PermanentError(
            fmt::format("order {}: illegal transition {} → {}", order.id, to_string(order.status), to_string(to)));
    }
    std::vector<std::string> types;
    std::vector<std::string> data;
    for (const auto& event : events) {
        types.push_back(event.type);
        data.push_back(to_json(event.data));
    }
    // Named: g++ 12 mishandles non-trivial temporaries inside a co_await expression.
    const auto type_array = pg::text_array(types);
    const auto data_array = pg::text_array(data);
    const auto event_count = static_cast<std::int64_t>(events.size());
    // The version check is a second guard behind the row lock: an append can never skip or reuse a version.
    const auto rows = co_await transaction.query(
        "WITH moved AS ("
        "  UPDATE shop.orders SET status = $2::shop.order_status, status_reason = coalesce(NULLIF($3, ''), "
        "    status_reason), version = version + $4, updated_at = now() "
        "  WHERE id = $1 AND version = $5 RETURNING id) "
        "INSERT INTO shop.events (aggregate_id, version, type, data) "
        "SELECT moved.id, $5 + e.position, e.type, e.data::jsonb "
        "FROM moved, unnest($6::text[], $7::text[]) WITH ORDINALITY AS e(type, data, position) "
        "RETURNING id, version",
        order.id, to_string(to), reason, event_count, order.version, type_array, data_array);
    if (rows.rows() != static_cast<int>(events.size())) {
        throw std::runtime_error(
            fmt::format("order {} changed under its lock (version {} expected)", order.id, order.version));
    }
    std::vector<std::pair<std::int64_t, std::int64_t>> by_version;
    by_version.reserve(events.size());
    for (int row = 0; row < rows.rows(); ++row) {
        by_version.emplace_back(rows.integer(row, 1), rows.integer(row, 0));
    }
    std::sort(by_version.begin(), by_version.end());
    std::vector<std::int64_t> ids;
    ids.reserve(by_version.size());
    for (const auto& [version, id] : by_version) {
        ids.push_back(id);
    }
    order.status = to;
    order.version += static_cast<std::int64_t>(events.size());
    co_return ids;
}

void emit_projection_update(JobContext& context, const std::vector<std::int64_t>& event_ids) {
    if (!event_ids.empty()) {
        context.emit("projections.update", fmt::format(R"({{"event_id":{}}})", event_ids.back()));
    }
}

void emit_order_email(JobContext& context, std::string_view template_name, const LockedOrder& order,
                      boost::json::object data) {
    data["order_id"] = order.id;
    if (!order.customer_name.empty()) {
        data["customer_name"] = order.customer_name;
    }
    boost::json::object payload;
    payload["template"] = template_name;
    payload["to"] = order.customer_email;
    payload["data"] = std::move(data);
    payload["dedupe_key"] = fmt::format("order:{}:{}", order.id, template_name);
    context.emit("emails.send", to_json(payload));
}

Compensation cancel_order_when(std::string_view step) {
    return [step](simdjson::dom::element payload, std::string_view reason,
                  std::string_view error) -> std::vector<FollowUp> {
        // A message refused as such (no such order, the wrong amount, a transition the order cannot make) says
        // nothing about the order's saga, and a stray or forged one must not cancel a real order: the order's
        // deadline ends a saga that such a refusal leaves waiting.
        if (reason == "invalid_payload" || reason == "illegal_transition") {
            return {};
        }
        // The reason's limit in orders.cancel's schema, less the ellipsis a cut reason ends with.
        constexpr std::size_t kMaxReasonBytes = 200 - 3;
        PayloadReader reader(payload);
        const auto order_id = reader.identifier("order_id");
        if (!order_id) {
            return {};  // a payload naming no order: the order's deadline ends its saga
        }
        const auto why = job_headers::bounded(fmt::format("{} gave up: {}: {}", step, reason, error), kMaxReasonBytes);
        return {{"orders.cancel", to_json({{"order_id", *order_id}, {"reason", why}})}};
    };
}

DeadLetter illegal_transition(const LockedOrder& order, OrderStatus to) {
    return DeadLetter{"illegal_transition", fmt::format("order {} is {}; it cannot become {}", order.id,
                                                        to_string(order.status), to_string(to))};
}

}  // namespace conveyor::jobs
