#include <fmt/format.h>

#include <boost/json/array.hpp>
#include <map>

#include "../common/families.hpp"
#include "../common/payload.hpp"
#include "order_store.hpp"

namespace conveyor::jobs {
namespace asio = boost::asio;

namespace {

constexpr std::size_t kMaxItems = 100;
constexpr std::int64_t kMaxQuantity = 1000;
constexpr std::size_t kMaxNameChars = 200;
constexpr std::size_t kMaxReasonChars = 200;

struct PlaceOrder {
    std::string_view order_id;
    std::string_view customer_id;
    std::string_view email;
    std::string_view name;
    std::string_view currency;
    /// Quantities by product, lines naming the same product added up; ordered by id as the rows are locked.
    std::map<std::string_view, std::int64_t> quantities;
};

std::optional<PlaceOrder> read_place_order(PayloadReader& reader) {
    PlaceOrder order;
    order.order_id = reader.identifier("order_id").value_or("");
    if (const auto customer = reader.object("customer", Need::required)) {
        PayloadReader fields(reader, *customer, "customer");
        order.customer_id = fields.identifier("id").value_or("");
        order.email = fields.email("email").value_or("");
        order.name = fields.string("name", Need::optional, 1, kMaxNameChars).value_or("");
        fields.only({"id", "email", "name"});
    }
    if (const auto items = reader.array("items", Need::required, 1, kMaxItems)) {
        std::size_t index = 0;
        for (const auto item : *items) {
            const auto path = fmt::format("items[{}]", index++);
            simdjson::dom::object line;
            if (item.get(line) != simdjson::SUCCESS) {
                reader.fail(fmt::format("'{}' must be an object", path));
                break;
            }
            PayloadReader fields(reader, line, path);
            const auto product = fields.identifier("product_id");
            const auto quantity = fields.integer("quantity", Need::required, 1, kMaxQuantity);
            fields.only({"product_id", "quantity"});
            if (!product || !quantity) {
                break;
            }
            order.quantities[*product] += *quantity;
        }
    }
    order.currency = reader.currency("currency").value_or("");
    reader.only({"order_id", "customer", "items", "currency"});
    if (!reader.ok()) {
        return std::nullopt;
    }
    return order;
}

std::optional<std::string> validate_place(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)read_place_order(reader);
    return reader.error();
}

/// orders.place: creates the order and reserves its stock in one transaction, or rejects it when stock is short.
/// Product rows are locked in id order (ORDER BY id FOR UPDATE), the one order every job locks them in, so
/// concurrent orders queue on the products they share and never deadlock. A reserved order's deadline
/// (orders.expire) leaves with it: whatever happens to the steps after, the saga ends.
asio::awaitable<Outcome> place(JobContext& context, const Settings& settings) {
    PayloadReader reader(context.payload());
    const auto order = read_place_order(reader);
    if (!order) {
        Outcome invalid = DeadLetter{"invalid_payload", reader.error().value_or("")};
        co_return invalid;
    }
    auto& transaction = context.transaction();
    std::vector<std::string_view> product_ids;
    for (const auto& [product, quantity] : order->quantities) {
        product_ids.push_back(product);
    }
    // Named, as every argument below: g++ 12 mishandles non-trivial temporaries inside a co_await expression.
    const auto product_array = pg::text_array(product_ids);
    const auto products = co_await transaction.query(
        "SELECT id, stock, price_cents FROM shop.products WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
        product_array);
    std::map<std::string, std::pair<std::int64_t, std::int64_t>, std::less<>> stock_and_price;
    for (int row = 0; row < products.rows(); ++row) {
        stock_and_price.emplace(std::string(products.text(row, 0)),
                                std::make_pair(products.integer(row, 1), products.integer(row, 2)));
    }
    std::vector<std::string> quantities;
    std::vector<std::string> prices;
    boost::json::array lines;
    boost::json::array shortages;
    std::int64_t total = 0;
    std::int64_t item_count = 0;
    for (const auto& [product, quantity] : order->quantities) {
        const auto found = stock_and_price.find(product);
        if (found == stock_and_price.end()) {
            Outcome unknown = DeadLetter{
                "invalid_payload", fmt::format("order {}: no product '{}' in the catalogue", order->order_id, product)};
            co_return unknown;
        }
        const auto [stock, price] = found->second;
        if (stock < quantity) {
            shortages.push_back({{"product_id", product}, {"wanted", quantity}, {"in_stock", stock}});
        }
        quantities.push_back(std::to_string(quantity));
        prices.push_back(std::to_string(price));
        lines.push_back({{"product_id", product}, {"quantity", quantity}, {"unit_price_cents", price}});
        total += quantity * price;
        item_count += quantity;
    }
    const bool reserved = shortages.empty();
    const auto status = reserved ? OrderStatus::reserved : OrderStatus::rejected;
    const std::string reason = reserved ? std::string() : "out of stock";
    DomainEvent placed{"OrderPlaced",
                       {{"customer_id", order->customer_id},
                        {"currency", order->currency},
                        {"total_cents", total},
                        {"item_count", item_count},
                        {"items", lines}}};
    DomainEvent outcome = reserved ? DomainEvent{"StockReserved", {{"items", lines}}}
                                   : DomainEvent{"OrderRejected", {{"reason", reason}, {"shortages", shortages}}};
    const std::vector<std::string> event_types{placed.type, outcome.type};
    const std::vector<std::string> event_data{to_json(placed.data), to_json(outcome.data)};
    const auto quantity_array = pg::text_array(quantities);
    const auto price_array = pg::text_array(prices);
    const auto event_type_array = pg::text_array(event_types);
    const auto event_data_array = pg::text_array(event_data);

    // One statement writes the customer, the order, its lines, the reservation and both events. The customer row
    // is written only when it changed, and an order id seen before inserts nothing at all.
    const auto events = co_await transaction.query(
        "WITH customer AS ("
        "  INSERT INTO shop.customers AS c (id, email, name) VALUES ($2, $3, NULLIF($4, '')) "
        "  ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = coalesce(excluded.name, c.name) "
        "  WHERE (c.email, c.name) IS DISTINCT FROM (excluded.email, coalesce(excluded.name, c.name))), "
        "placed AS ("
        "  INSERT INTO shop.orders (id, customer_id, currency, total_cents, status, status_reason, version, "
        "    placed_at, updated_at) "
        "  VALUES ($1, $2, $5, $6, $7::shop.order_status, NULLIF($8, ''), 2, now(), now()) "
        "  ON CONFLICT (id) DO NOTHING RETURNING id), "
        "lines AS ("
        "  INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price_cents) "
        "  SELECT placed.id, l.product_id, l.quantity, l.price "
        "  FROM placed, unnest($9::text[], $10::integer[], $11::bigint[]) AS l(product_id, quantity, price)), "
        "reservation AS ("
        "  UPDATE shop.products p SET stock = p.stock - l.quantity "
        "  FROM placed, unnest($9::text[], $10::integer[]) AS l(product_id, quantity) "
        "  WHERE $7 = 'reserved' AND p.id = l.product_id) "
        "INSERT INTO shop.events (aggregate_id, version, type, data) "
        "SELECT placed.id, e.version, e.type, e.data::jsonb "
        "FROM placed, unnest($12::text[], $13::text[]) WITH ORDINALITY AS e(type, data, version) "
        "RETURNING id, version",
        order->order_id, order->customer_id, order->email, order->name, order->currency, total, to_string(status),
        reason, product_array, quantity_array, price_array, event_type_array, event_data_array);
    if (events.rows() == 0) {
        context.log().info("order {} exists already; nothing to do", order->order_id);
        co_return Success{};
    }
    std::vector<std::int64_t> event_ids(2);
    for (int row = 0; row < events.rows(); ++row) {
        event_ids.at(static_cast<std::size_t>(events.integer(row, 1) - 1)) = events.integer(row, 0);
    }
    LockedOrder created{std::string(order->order_id),
                        status,
                        2,
                        std::string(order->customer_id),
                        std::string(order->email),
                        std::string(order->name),
                        std::string(order->currency),
                        total};
    if (reserved) {
        boost::json::object charge{{"order_id", created.id},
                                   {"customer_id", created.customer_id},
                                   {"amount_cents", total},
                                   {"currency", created.currency}};
        context.emit("payments.charge", to_json(charge));
        context.emit("orders.expire", to_json({{"order_id", created.id}}),
                     std::chrono::ceil<std::chrono::seconds>(settings.order_timeout));
    } else {
        context.log().info("order {} rejected: {} product(s) out of stock", created.id, shortages.size());
        emit_order_email(context, "out_of_stock", created, {{"products", fmt::format("{}", shortages.size())}});
    }
    emit_projection_update(context, event_ids);
    co_return Success{};
}

std::optional<std::string> validate_confirm(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.identifier("order_id");
    reader.only({"order_id"});
    return reader.error();
}

/// orders.confirm: a paid order becomes confirmed, once.
asio::awaitable<Outcome> confirm(JobContext& context) {
    PayloadReader reader(context.payload());
    const auto order_id = reader.identifier("order_id").value_or("");
    auto order = co_await lock_order(context.transaction(), order_id);
    if (!order) {
        Outcome unknown = DeadLetter{"invalid_payload", fmt::format("no order '{}'", order_id)};
        co_return unknown;
    }
    if (order->status == OrderStatus::confirmed) {
        co_return Success{};
    }
    if (!can_transition(order->status, OrderStatus::confirmed)) {
        Outcome refused = illegal_transition(*order, OrderStatus::confirmed);
        co_return refused;
    }
    const std::vector<DomainEvent> confirmed{{"OrderConfirmed", {}}};
    const auto events = co_await advance_order(context.transaction(), *order, OrderStatus::confirmed, {}, confirmed);
    emit_projection_update(context, events);
    co_return Success{};
}

std::optional<std::string> validate_cancel(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.identifier("order_id");
    (void)reader.string("reason", Need::required, 1, kMaxReasonChars);
    reader.only({"order_id", "reason"});
    return reader.error();
}

/// Puts a reserved order's quantities back in stock; returns what went back.
asio::awaitable<boost::json::array> release_stock(pg::Transaction& transaction, std::string_view order_id) {
    // Same lock order as orders.place: products by id.
    const auto lines = co_await transaction.query(
        "WITH locked AS (SELECT p.id FROM shop.products p JOIN shop.order_items i ON i.product_id = p.id "
        "  WHERE i.order_id = $1 ORDER BY p.id FOR UPDATE OF p) "
        "UPDATE shop.products p SET stock = p.stock + i.quantity FROM shop.order_items i, locked "
        "WHERE i.order_id = $1 AND i.product_id = p.id AND locked.id = p.id "
        "RETURNING p.id, i.quantity",
        order_id);
    boost::json::array released;
    for (int row = 0; row < lines.rows(); ++row) {
        released.push_back({{"product_id", lines.text(row, 0)}, {"quantity", lines.integer(row, 1)}});
    }
    co_return released;
}

/// Whether the gateway declined the order's charge: then nothing was charged, ever (one idempotency key per order).
asio::awaitable<bool> payment_declined(pg::Transaction& transaction, std::string_view order_id) {
    const auto rows =
        co_await transaction.query("SELECT 1 FROM shop.payments WHERE order_id = $1 AND status = 'declined'", order_id);
    co_return rows.rows() > 0;
}

/// Cancels an order not paid yet: its stock goes back (once: the release and the move to cancelled commit
/// together), and the customer hears why. Unless the gateway declined the charge, one may have been made that no
/// one heard of (a response lost, a charge job cancelled mid-call): a refund job looks for it once every call in
/// flight has ended.
asio::awaitable<std::vector<std::int64_t>> cancel_unpaid(JobContext& context, const Settings& settings,
                                                         LockedOrder& order, std::string_view reason) {
    auto& transaction = context.transaction();
    const bool reserved = order.status == OrderStatus::reserved;
    // Plain ifs: g++ 12 miscompiles a co_await inside a conditional expression.
    boost::json::array released;
    bool declined = false;
    if (reserved) {
        released = co_await release_stock(transaction, order.id);
        declined = co_await payment_declined(transaction, order.id);
    }
    const std::vector<DomainEvent> cancelled{{"OrderCancelled", {{"reason", reason}, {"released", released}}}};
    auto events = co_await advance_order(transaction, order, OrderStatus::cancelled, reason, cancelled);
    emit_order_email(context, declined ? "payment_failed" : "order_cancelled", order, {{"reason", reason}});
    if (reserved && !declined) {
        const auto calls_in_flight =
            std::chrono::ceil<std::chrono::seconds>(settings.gateway.timeout) + std::chrono::seconds(5);
        context.emit("payments.refund", to_json({{"order_id", order.id}}), calls_in_flight);
    }
    context.log().info("order {} cancelled ({}); {} product line(s) released", order.id, reason, released.size());
    co_return events;
}

/// Cancels a paid order: its stock goes back now, and its charge is refunded (payments.refund ends the saga).
asio::awaitable<std::vector<std::int64_t>> cancel_paid(JobContext& context, LockedOrder& order,
                                                       std::string_view reason) {
    auto& transaction = context.transaction();
    const auto released = co_await release_stock(transaction, order.id);
    const std::vector<DomainEvent> requested{{"RefundRequested", {{"reason", reason}, {"released", released}}}};
    auto events = co_await advance_order(transaction, order, OrderStatus::refunding, reason, requested);
    context.emit("payments.refund", to_json({{"order_id", order.id}}));
    context.log().info("order {} cancelled after payment ({}); refunding, {} product line(s) released", order.id,
                       reason, released.size());
    co_return events;
}

/// Who compensates: a cancellation refunds even a confirmed order; a deadline leaves a confirmed one alone.
enum class Compensator { cancellation, deadline };

/// The saga's compensation, whatever set it off (a customer, a step that gave up, the order's deadline): an order
/// not paid yet is cancelled, a paid one refunded; one whose saga ended or is refunding already stays as it is. It
/// decides under the order's lock, so an order confirmed a moment earlier is seen confirmed.
asio::awaitable<Outcome> compensate(JobContext& context, const Settings& settings, std::string_view order_id,
                                    std::string_view reason, Compensator by) {
    auto order = co_await lock_order(context.transaction(), order_id);
    if (!order) {
        Outcome unknown = DeadLetter{"invalid_payload", fmt::format("no order '{}'", order_id)};
        co_return unknown;
    }
    if (by == Compensator::deadline && order->status == OrderStatus::confirmed) {
        co_return Success{};
    }
    std::vector<std::int64_t> events;
    switch (order->status) {
        case OrderStatus::placed:
        case OrderStatus::reserved:
            events = co_await cancel_unpaid(context, settings, *order, reason);
            break;
        case OrderStatus::paid:
        case OrderStatus::confirmed:
            events = co_await cancel_paid(context, *order, reason);
            break;
        case OrderStatus::refunding:
        case OrderStatus::cancelled:
        case OrderStatus::rejected:
        case OrderStatus::refunded:
            context.log().info("order {} is {}; nothing to cancel ({})", order->id, to_string(order->status), reason);
            break;
    }
    emit_projection_update(context, events);
    co_return Success{};
}

/// orders.cancel: a customer's or operator's cancellation, and the compensation of a step that gave up.
asio::awaitable<Outcome> cancel(JobContext& context, const Settings& settings) {
    PayloadReader reader(context.payload());
    const auto order_id = reader.identifier("order_id").value_or("");
    const auto reason = reader.string("reason", Need::required, 1, kMaxReasonChars).value_or("");
    auto outcome = co_await compensate(context, settings, order_id, reason, Compensator::cancellation);
    co_return outcome;
}

/// orders.expire: the order's deadline, set when its stock was reserved. An order confirmed by then is left alone;
/// any other is compensated.
asio::awaitable<Outcome> expire(JobContext& context, const Settings& settings) {
    PayloadReader reader(context.payload());
    const auto order_id = reader.identifier("order_id").value_or("");
    const auto reason = fmt::format("not confirmed within {} s",
                                    std::chrono::ceil<std::chrono::seconds>(settings.order_timeout).count());
    auto outcome = co_await compensate(context, settings, order_id, reason, Compensator::deadline);
    co_return outcome;
}

}  // namespace

void register_order_jobs(JobRegistry& registry, const Settings& settings) {
    JobOptions options;
    options.transaction = TransactionMode::per_job;
    options.validate = validate_place;
    registry.add(
        "orders.place",
        [settings](JobContext& context) -> asio::awaitable<Outcome> {
            auto outcome = co_await place(context, settings);
            co_return outcome;
        },
        options);
    options.validate = validate_confirm;
    options.compensate = cancel_order_when("orders.confirm");
    registry.add("orders.confirm", confirm, options);
    options.compensate = nullptr;
    options.validate = validate_cancel;
    registry.add(
        "orders.cancel",
        [settings](JobContext& context) -> asio::awaitable<Outcome> {
            auto outcome = co_await cancel(context, settings);
            co_return outcome;
        },
        options);
    options.validate = validate_confirm;
    registry.add(
        "orders.expire",
        [settings](JobContext& context) -> asio::awaitable<Outcome> {
            auto outcome = co_await expire(context, settings);
            co_return outcome;
        },
        options);
}

}  // namespace conveyor::jobs
