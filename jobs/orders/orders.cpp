#include <fmt/format.h>

#include <boost/json/array.hpp>
#include <boost/json/parse.hpp>
#include <limits>
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
    Quantities quantities;
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
    order.quantities = read_quantities(reader, "items", kMaxItems, kMaxQuantity);
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

/// The catalogue's price of each product asked for; a product the catalogue lacks is absent.
asio::awaitable<std::map<std::string, std::int64_t, std::less<>>> catalogue_prices(pg::Transaction& transaction,
                                                                                   const Quantities& quantities) {
    std::vector<std::string_view> product_ids;
    for (const auto& [product, quantity] : quantities) {
        product_ids.push_back(product);
    }
    // Named, as every argument below: g++ 12 mishandles non-trivial temporaries inside a co_await expression.
    const auto product_array = pg::text_array(product_ids);
    const auto rows = co_await transaction.query("SELECT id, price_cents FROM shop.products WHERE id = ANY($1::text[])",
                                                 product_array);
    std::map<std::string, std::int64_t, std::less<>> prices;
    for (int row = 0; row < rows.rows(); ++row) {
        prices.emplace(std::string(rows.text(row, 0)), rows.integer(row, 1));
    }
    co_return prices;
}

/// Asks inventory to reserve the order's quantities: it answers with orders.stock_reserved or orders.stock_short.
void emit_reservation(JobContext& context, std::string_view order_id, const Quantities& quantities) {
    boost::json::array items;
    for (const auto& [product, quantity] : quantities) {
        items.push_back({{"product_id", product}, {"quantity", quantity}});
    }
    context.emit("inventory.reserve", to_json({{"order_id", order_id}, {"items", std::move(items)}}));
}

/// orders.place: records the order, priced from the catalogue, and asks inventory for its stock (inventory.reserve):
/// orders and inventory share no table and no transaction, only jobs. The order's deadline (orders.expire) leaves
/// with it: whatever happens to the steps after, the saga ends.
asio::awaitable<Outcome> place(JobContext& context, const Settings& settings) {
    PayloadReader reader(context.payload());
    const auto order = read_place_order(reader);
    if (!order) {
        Outcome invalid = DeadLetter{"invalid_payload", reader.error().value_or("")};
        co_return invalid;
    }
    auto& transaction = context.transaction();
    const auto prices = co_await catalogue_prices(transaction, order->quantities);
    std::vector<std::string> product_ids;
    std::vector<std::string> quantities;
    std::vector<std::string> unit_prices;
    boost::json::array lines;
    std::int64_t total = 0;
    std::int64_t item_count = 0;
    for (const auto& [product, quantity] : order->quantities) {
        const auto price = prices.find(product);
        if (price == prices.end()) {
            Outcome unknown = DeadLetter{
                "invalid_payload", fmt::format("order {}: no product '{}' in the catalogue", order->order_id, product)};
            co_return unknown;
        }
        product_ids.emplace_back(product);
        quantities.push_back(std::to_string(quantity));
        unit_prices.push_back(std::to_string(price->second));
        lines.push_back({{"product_id", product}, {"quantity", quantity}, {"unit_price_cents", price->second}});
        total += quantity * price->second;
        item_count += quantity;
    }
    const auto placed = to_json({{"customer_id", order->customer_id},
                                 {"currency", order->currency},
                                 {"total_cents", total},
                                 {"item_count", item_count},
                                 {"items", lines}});
    const auto product_array = pg::text_array(product_ids);
    const auto quantity_array = pg::text_array(quantities);
    const auto price_array = pg::text_array(unit_prices);
    // One statement writes the customer, the order, its lines and its first event. The customer row is written only
    // when it changed, and an order id seen before inserts nothing at all.
    const auto events = co_await transaction.query(
        "WITH customer AS ("
        "  INSERT INTO shop.customers AS c (id, email, name) VALUES ($2, $3, NULLIF($4, '')) "
        "  ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = coalesce(excluded.name, c.name) "
        "  WHERE (c.email, c.name) IS DISTINCT FROM (excluded.email, coalesce(excluded.name, c.name))), "
        "placed AS ("
        "  INSERT INTO shop.orders (id, customer_id, currency, total_cents, status, version, placed_at, updated_at) "
        "  VALUES ($1, $2, $5, $6, 'placed', 1, now(), now()) "
        "  ON CONFLICT (id) DO NOTHING RETURNING id), "
        "lines AS ("
        "  INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price_cents) "
        "  SELECT placed.id, l.product_id, l.quantity, l.price "
        "  FROM placed, unnest($7::text[], $8::integer[], $9::bigint[]) AS l(product_id, quantity, price)) "
        "INSERT INTO shop.events (aggregate_id, version, type, data) "
        "SELECT placed.id, 1, 'OrderPlaced', $10::jsonb FROM placed RETURNING id",
        order->order_id, order->customer_id, order->email, order->name, order->currency, total, product_array,
        quantity_array, price_array, placed);
    if (events.rows() == 0) {
        context.log().info("order {} exists already; nothing to do", order->order_id);
        co_return Success{};
    }
    emit_reservation(context, order->order_id, order->quantities);
    context.emit("orders.expire", to_json({{"order_id", order->order_id}}),
                 std::chrono::ceil<std::chrono::seconds>(settings.order_timeout));
    emit_projection_update(context, {events.integer(0, 0)});
    co_return Success{};
}

std::optional<std::string> validate_stock_short(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.identifier("order_id");
    if (const auto shortages = reader.array("shortages", Need::required, 1, kMaxItems)) {
        std::size_t index = 0;
        for (const auto shortage : *shortages) {
            const auto path = fmt::format("shortages[{}]", index++);
            simdjson::dom::object fields_object;
            if (shortage.get(fields_object) != simdjson::SUCCESS) {
                reader.fail(fmt::format("'{}' must be an object", path));
                break;
            }
            PayloadReader fields(reader, fields_object, path);
            (void)fields.identifier("product_id");
            (void)fields.integer("wanted", Need::required, 1, kMaxItems * kMaxQuantity);
            (void)fields.integer("in_stock", Need::required, 0, std::numeric_limits<std::int32_t>::max());
            fields.only({"product_id", "wanted", "in_stock"});
        }
    }
    reader.only({"order_id", "shortages"});
    return reader.error();
}

/// A placed order whose stock inventory holds: reserved, and charged.
asio::awaitable<std::vector<std::int64_t>> reserve_order(JobContext& context, LockedOrder& order) {
    const std::vector<DomainEvent> reserved{{"StockReserved", {}}};
    auto events = co_await advance_order(context.transaction(), order, OrderStatus::reserved, {}, reserved);
    boost::json::object charge{{"order_id", order.id},
                               {"customer_id", order.customer_id},
                               {"amount_cents", order.total_cents},
                               {"currency", order.currency}};
    context.emit("payments.charge", to_json(charge));
    co_return events;
}

/// A placed order whose stock is short: rejected, and the customer told.
asio::awaitable<std::vector<std::int64_t>> reject_order(JobContext& context, LockedOrder& order) {
    simdjson::dom::element listed;
    if (context.payload()["shortages"].get(listed) != simdjson::SUCCESS) {
        throw PermanentError("'shortages' is missing");  // the validator saw to it
    }
    const auto shortages = boost::json::parse(simdjson::minify(listed));
    const std::vector<DomainEvent> rejected{{"OrderRejected", {{"reason", "out of stock"}, {"shortages", shortages}}}};
    auto events = co_await advance_order(context.transaction(), order, OrderStatus::rejected, "out of stock", rejected);
    const auto short_products = shortages.as_array().size();
    context.log().info("order {} rejected: {} product(s) out of stock", order.id, short_products);
    emit_order_email(context, "out_of_stock", order, {{"products", fmt::format("{}", short_products)}});
    co_return events;
}

enum class InventoryAnswer { reserved, short_of_stock };

/// orders.stock_reserved and orders.stock_short: inventory's answer to the order's inventory.reserve. A placed order
/// is reserved (and charged) or rejected (and its customer told). An order no longer waiting for its stock
/// (cancelled meanwhile) stays as it is: its cancellation asked inventory to release whatever it holds.
asio::awaitable<Outcome> take_answer(JobContext& context, InventoryAnswer answer) {
    PayloadReader reader(context.payload());
    const auto order_id = reader.identifier("order_id").value_or("");
    auto order = co_await lock_order(context.transaction(), order_id);
    if (!order) {
        Outcome unknown = DeadLetter{"invalid_payload", fmt::format("no order '{}'", order_id)};
        co_return unknown;
    }
    if (order->status != OrderStatus::placed) {
        context.log().info("order {} is {}; inventory's answer changes nothing", order->id, to_string(order->status));
        co_return Success{};
    }
    // Plain ifs: g++ 12 miscompiles a co_await inside a conditional expression.
    std::vector<std::int64_t> events;
    if (answer == InventoryAnswer::reserved) {
        events = co_await reserve_order(context, *order);
    } else {
        events = co_await reject_order(context, *order);
    }
    emit_projection_update(context, events);
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

/// Whether the gateway declined the order's charge: then nothing was charged, ever (one idempotency key per order).
asio::awaitable<bool> payment_declined(pg::Transaction& transaction, std::string_view order_id) {
    const auto rows =
        co_await transaction.query("SELECT 1 FROM shop.payments WHERE order_id = $1 AND status = 'declined'", order_id);
    co_return rows.rows() > 0;
}

/// Tells inventory to release what it holds for the order, now or whenever its reservation arrives.
void emit_release(JobContext& context, const LockedOrder& order, std::string_view reason) {
    context.emit("inventory.release", to_json({{"order_id", order.id}, {"reason", reason}}));
}

/// Cancels an order not paid yet: inventory releases its stock (once, whichever of the reservation and the release
/// it sees first), and the customer hears why. Unless the gateway declined the charge of a reserved order, one may
/// have been made that no one heard of (a response lost, a charge job cancelled mid-call): a refund job looks for it
/// once every call in flight has ended.
asio::awaitable<std::vector<std::int64_t>> cancel_unpaid(JobContext& context, const Settings& settings,
                                                         LockedOrder& order, std::string_view reason) {
    auto& transaction = context.transaction();
    const bool reserved = order.status == OrderStatus::reserved;
    // A plain if: g++ 12 miscompiles a co_await inside a conditional expression.
    bool declined = false;
    if (reserved) {
        declined = co_await payment_declined(transaction, order.id);
    }
    const std::vector<DomainEvent> cancelled{{"OrderCancelled", {{"reason", reason}}}};
    auto events = co_await advance_order(transaction, order, OrderStatus::cancelled, reason, cancelled);
    emit_release(context, order, reason);
    emit_order_email(context, declined ? "payment_failed" : "order_cancelled", order, {{"reason", reason}});
    if (reserved && !declined) {
        const auto calls_in_flight =
            std::chrono::ceil<std::chrono::seconds>(settings.gateway.timeout) + std::chrono::seconds(5);
        context.emit("payments.refund", to_json({{"order_id", order.id}}), calls_in_flight);
    }
    context.log().info("order {} cancelled ({})", order.id, reason);
    co_return events;
}

/// Cancels a paid order: inventory releases its stock now, and its charge is refunded (payments.refund ends the
/// saga).
asio::awaitable<std::vector<std::int64_t>> cancel_paid(JobContext& context, LockedOrder& order,
                                                       std::string_view reason) {
    const std::vector<DomainEvent> requested{{"RefundRequested", {{"reason", reason}}}};
    auto events = co_await advance_order(context.transaction(), order, OrderStatus::refunding, reason, requested);
    emit_release(context, order, reason);
    context.emit("payments.refund", to_json({{"order_id", order.id}}));
    context.log().info("order {} cancelled after payment ({}); refunding", order.id, reason);
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
    // An archived order has ended; of those, only a confirmed one would change (be refunded), and no longer may.
    if (order->archived && order->status == OrderStatus::confirmed) {
        Outcome refused =
            DeadLetter{"illegal_transition",
                       fmt::format("order {} is archived (its month is closed): it changes no more", order->id)};
        co_return refused;
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
    options.compensate = cancel_order_when("orders.stock_reserved");
    registry.add(
        "orders.stock_reserved",
        [](JobContext& context) -> asio::awaitable<Outcome> {
            auto outcome = co_await take_answer(context, InventoryAnswer::reserved);
            co_return outcome;
        },
        options);
    options.compensate = nullptr;
    options.validate = validate_stock_short;
    registry.add(
        "orders.stock_short",
        [](JobContext& context) -> asio::awaitable<Outcome> {
            auto outcome = co_await take_answer(context, InventoryAnswer::short_of_stock);
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
    register_archive_jobs(registry);
}

}  // namespace conveyor::jobs
