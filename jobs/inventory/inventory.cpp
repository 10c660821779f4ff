#include <fmt/format.h>

#include <boost/json/array.hpp>

#include "../common/families.hpp"
#include "../common/payload.hpp"

/// Inventory, a bounded context of its own: the stock of each product, the reservation each order holds, and the
/// events of both (schema inventory). Orders reach it only through jobs (inventory.reserve, inventory.release) and
/// hear back through jobs (orders.stock_reserved, orders.stock_short); no transaction spans the two.
namespace conveyor::jobs {
namespace asio = boost::asio;

namespace {

constexpr std::size_t kMaxLines = 100;
/// An order's lines for one product added up: 100 lines of at most 1,000 each.
constexpr std::int64_t kMaxQuantity = 100'000;
constexpr std::size_t kMaxReasonChars = 200;

enum class ReservationStatus { none, reserved, short_of_stock, released };

struct Reservation {
    ReservationStatus status = ReservationStatus::none;
    std::int64_t version = 0;
};

/// Locks the order's reservation until the transaction ends. Every inventory job of an order takes this lock first
/// and the stock rows after it, by product id: two jobs of one order wait for each other, jobs of different orders
/// meet only on the stock rows, always in the same order.
asio::awaitable<Reservation> lock_reservation(pg::Transaction& transaction, std::string_view order_id) {
    const auto row = co_await transaction.query(
        "SELECT status, version FROM inventory.reservations WHERE order_id = $1 FOR UPDATE", order_id);
    if (row.rows() == 0) {
        co_return Reservation{};
    }
    const auto status = row.text(0, 0);
    Reservation reservation;
    reservation.version = row.integer(0, 1);
    reservation.status = status == "reserved" ? ReservationStatus::reserved
                         : status == "short"  ? ReservationStatus::short_of_stock
                                              : ReservationStatus::released;
    co_return reservation;
}

std::optional<std::string> validate_reserve(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.identifier("order_id");
    (void)read_quantities(reader, "items", kMaxLines, kMaxQuantity);
    reader.only({"order_id", "items"});
    return reader.error();
}

struct Shortfall {
    boost::json::array shortages;
    std::vector<std::string> product_ids;
    std::vector<std::string> quantities;
};

/// Locks the stock rows of the products asked for (by product id) and lists what they cannot cover.
asio::awaitable<Shortfall> lock_stock(pg::Transaction& transaction, const Quantities& wanted) {
    Shortfall shortfall;
    for (const auto& [product, quantity] : wanted) {
        shortfall.product_ids.emplace_back(product);
        shortfall.quantities.push_back(std::to_string(quantity));
    }
    // Named: g++ 12 mishandles non-trivial temporaries inside a co_await expression.
    const auto product_array = pg::text_array(shortfall.product_ids);
    const auto rows = co_await transaction.query(
        "SELECT product_id, available FROM inventory.stock WHERE product_id = ANY($1::text[]) "
        "ORDER BY product_id FOR UPDATE",
        product_array);
    std::map<std::string_view, std::int64_t, std::less<>> available;
    for (int row = 0; row < rows.rows(); ++row) {
        available.emplace(rows.text(row, 0), rows.integer(row, 1));
    }
    for (const auto& [product, quantity] : wanted) {
        const auto found = available.find(product);
        const auto in_stock = found == available.end() ? 0 : found->second;
        if (in_stock < quantity) {
            shortfall.shortages.push_back({{"product_id", product}, {"wanted", quantity}, {"in_stock", in_stock}});
        }
    }
    co_return shortfall;
}

/// Takes the stock and records the reservation with its event; false when a release of the order got there first.
asio::awaitable<bool> take_stock(pg::Transaction& transaction, std::string_view order_id, const Shortfall& lines,
                                 const std::string& event_data) {
    const auto product_array = pg::text_array(lines.product_ids);
    const auto quantity_array = pg::text_array(lines.quantities);
    const auto rows = co_await transaction.query(
        "WITH reservation AS ("
        "  INSERT INTO inventory.reservations (order_id, status, version) VALUES ($1, 'reserved', 1) "
        "  ON CONFLICT (order_id) DO NOTHING RETURNING order_id), "
        "lines AS ("
        "  INSERT INTO inventory.reservation_lines (order_id, product_id, quantity) "
        "  SELECT reservation.order_id, l.product_id, l.quantity "
        "  FROM reservation, unnest($2::text[], $3::integer[]) AS l(product_id, quantity)), "
        "taken AS ("
        "  UPDATE inventory.stock s SET available = s.available - l.quantity "
        "  FROM reservation, unnest($2::text[], $3::integer[]) AS l(product_id, quantity) "
        "  WHERE s.product_id = l.product_id) "
        "INSERT INTO inventory.events (aggregate_id, version, type, data) "
        "SELECT reservation.order_id, 1, 'StockReserved', $4::jsonb FROM reservation RETURNING id",
        order_id, product_array, quantity_array, event_data);
    co_return rows.rows() == 1;
}

/// Records that the order's stock was short (nothing taken); false when a release of the order got there first.
asio::awaitable<bool> record_shortage(pg::Transaction& transaction, std::string_view order_id,
                                      const std::string& event_data) {
    const auto rows = co_await transaction.query(
        "WITH reservation AS ("
        "  INSERT INTO inventory.reservations (order_id, status, version) VALUES ($1, 'short', 1) "
        "  ON CONFLICT (order_id) DO NOTHING RETURNING order_id) "
        "INSERT INTO inventory.events (aggregate_id, version, type, data) "
        "SELECT reservation.order_id, 1, 'StockShort', $2::jsonb FROM reservation RETURNING id",
        order_id, event_data);
    co_return rows.rows() == 1;
}

/// inventory.reserve: holds the order's quantities, all or nothing, and tells orders which it was. An order that
/// has a reservation already (a duplicate, a replay, or a release that came first) changes nothing.
asio::awaitable<Outcome> reserve(JobContext& context) {
    PayloadReader reader(context.payload());
    const auto order_id = reader.identifier("order_id").value_or("");
    const auto wanted = read_quantities(reader, "items", kMaxLines, kMaxQuantity);
    auto& transaction = context.transaction();
    const auto existing = co_await lock_reservation(transaction, order_id);
    if (existing.status != ReservationStatus::none) {
        context.log().info("order {} has its reservation already; nothing to reserve", order_id);
        co_return Success{};
    }
    const auto shortfall = co_await lock_stock(transaction, wanted);
    if (!shortfall.shortages.empty()) {
        const auto data = to_json({{"shortages", shortfall.shortages}});
        const bool recorded = co_await record_shortage(transaction, order_id, data);
        if (recorded) {
            context.emit("orders.stock_short", to_json({{"order_id", order_id}, {"shortages", shortfall.shortages}}));
        }
        co_return Success{};
    }
    boost::json::array items;
    for (const auto& [product, quantity] : wanted) {
        items.push_back({{"product_id", product}, {"quantity", quantity}});
    }
    const auto data = to_json({{"items", items}});
    const bool taken = co_await take_stock(transaction, order_id, shortfall, data);
    if (taken) {
        context.emit("orders.stock_reserved", to_json({{"order_id", order_id}}));
    }
    co_return Success{};
}

std::optional<std::string> validate_release(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.identifier("order_id");
    (void)reader.string("reason", Need::required, 1, kMaxReasonChars);
    reader.only({"order_id", "reason"});
    return reader.error();
}

/// Puts a reservation's stock back (stock rows locked by product id) and closes it with its event; returns the
/// lines put back.
asio::awaitable<std::int64_t> put_back(pg::Transaction& transaction, std::string_view order_id, std::int64_t version,
                                       std::string_view reason) {
    const auto rows = co_await transaction.query(
        "WITH locked AS ("
        "  SELECT s.product_id FROM inventory.stock s JOIN inventory.reservation_lines l USING (product_id) "
        "  WHERE l.order_id = $1 ORDER BY s.product_id FOR UPDATE OF s), "
        "back AS ("
        "  UPDATE inventory.stock s SET available = s.available + l.quantity "
        "  FROM inventory.reservation_lines l, locked "
        "  WHERE l.order_id = $1 AND l.product_id = s.product_id AND locked.product_id = s.product_id "
        "  RETURNING s.product_id, l.quantity), "
        "closed AS ("
        "  UPDATE inventory.reservations SET status = 'released', version = version + 1, updated_at = now() "
        "  WHERE order_id = $1 AND version = $2 RETURNING order_id, version) "
        "INSERT INTO inventory.events (aggregate_id, version, type, data) "
        "SELECT closed.order_id, closed.version, 'StockReleased', jsonb_build_object('reason', $3::text, 'items', "
        "  (SELECT coalesce(jsonb_agg(jsonb_build_object('product_id', product_id, 'quantity', quantity) "
        "     ORDER BY product_id), '[]') FROM back)) "
        "FROM closed RETURNING jsonb_array_length(data->'items')",
        order_id, version, reason);
    if (rows.rows() != 1) {
        throw std::runtime_error(fmt::format("reservation {} changed under its lock", order_id));
    }
    co_return rows.integer(0, 0);
}

/// inventory.release: gives back what the order's reservation holds, once. A release that comes before its
/// reservation (the order was cancelled while inventory.reserve waited in its queue) closes the reservation
/// empty, so the reservation, when it comes, takes nothing.
asio::awaitable<Outcome> release(JobContext& context) {
    PayloadReader reader(context.payload());
    const auto order_id = reader.identifier("order_id").value_or("");
    const auto reason = reader.string("reason", Need::required, 1, kMaxReasonChars).value_or("");
    auto& transaction = context.transaction();
    const auto withdrawn = co_await transaction.query(
        "WITH reservation AS ("
        "  INSERT INTO inventory.reservations (order_id, status, version) VALUES ($1, 'released', 1) "
        "  ON CONFLICT (order_id) DO NOTHING RETURNING order_id) "
        "INSERT INTO inventory.events (aggregate_id, version, type, data) "
        "SELECT reservation.order_id, 1, 'ReservationWithdrawn', jsonb_build_object('reason', $2::text) "
        "FROM reservation RETURNING id",
        order_id, reason);
    if (withdrawn.rows() == 1) {
        context.log().info("order {}: released before its reservation came; it will take nothing", order_id);
        co_return Success{};
    }
    const auto existing = co_await lock_reservation(transaction, order_id);
    if (existing.status != ReservationStatus::reserved) {
        co_return Success{};  // short of stock, or released already: nothing held
    }
    const auto lines = co_await put_back(transaction, order_id, existing.version, reason);
    context.log().info("order {}: {} product line(s) back in stock ({})", order_id, lines, reason);
    co_return Success{};
}

}  // namespace

void register_inventory_jobs(JobRegistry& registry) {
    JobOptions options;
    options.transaction = TransactionMode::per_job;
    options.validate = validate_reserve;
    registry.add("inventory.reserve", reserve, options);
    options.validate = validate_release;
    registry.add("inventory.release", release, options);
}

}  // namespace conveyor::jobs
