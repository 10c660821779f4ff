#include <fmt/format.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>

#include <boost/json/object.hpp>
#include <charconv>

#include "../common/families.hpp"
#include "../common/payload.hpp"
#include "../orders/order_store.hpp"

namespace conveyor::jobs {
namespace asio = boost::asio;

namespace {

constexpr std::int64_t kMaxAmountCents = 100'000'000'000;
constexpr std::size_t kMaxErrorBodyBytes = 300;

struct Charge {
    std::string_view order_id;
    std::string_view customer_id;
    std::int64_t amount_cents = 0;
    std::string_view currency;
};

std::optional<Charge> read_charge(PayloadReader& reader) {
    Charge charge;
    charge.order_id = reader.identifier("order_id").value_or("");
    charge.customer_id = reader.identifier("customer_id").value_or("");
    charge.amount_cents = reader.integer("amount_cents", Need::required, 1, kMaxAmountCents).value_or(0);
    charge.currency = reader.currency("currency").value_or("");
    reader.only({"order_id", "customer_id", "amount_cents", "currency"});
    if (!reader.ok()) {
        return std::nullopt;
    }
    return charge;
}

}  // namespace

std::optional<std::string> validate_charge(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)read_charge(reader);
    return reader.error();
}

namespace {

/// The gateway as the payment jobs share it: one keep-alive client, one circuit breaker, request metrics.
class PaymentGateway {
  public:
    PaymentGateway(const Settings& settings, prometheus::Registry& metrics, asio::any_io_executor executor)
        : client_(std::move(executor), settings.gateway),
          key_(settings.gateway_key),
          breaker_("payment_gateway", settings.gateway_circuit, metrics),
          requests_(prometheus::BuildCounter()
                        .Name("conveyor_payment_gateway_requests_total")
                        .Help("Requests to the payment gateway by operation (charge, refund, lookup) and result: an "
                              "HTTP status class, 402, or a transport failure (refused, timeout, broken)")
                        .Register(metrics)),
          latency_(prometheus::BuildHistogram()
                       .Name("conveyor_payment_gateway_request_seconds")
                       .Help("Time from sending a request to the payment gateway to its complete response")
                       .Register(metrics)
                       .Add({}, prometheus::Histogram::BucketBoundaries{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                                        2.5, 5, 10, 30})) {}

    http::Client& client() noexcept { return client_; }
    const std::string& key() const noexcept { return key_; }
    CircuitBreaker& breaker() noexcept { return breaker_; }
    void count(std::string_view operation, std::string_view result) {
        requests_.Add({{"operation", std::string(operation)}, {"result", std::string(result)}}).Increment();
    }
    void observe(std::chrono::steady_clock::duration took) {
        latency_.Observe(std::chrono::duration<double>(took).count());
    }

  private:
    http::Client client_;
    std::string key_;
    CircuitBreaker breaker_;
    prometheus::Family<prometheus::Counter>& requests_;
    prometheus::Histogram& latency_;
};

std::string_view status_class(unsigned status) {
    if (status == 402) {
        return "402";
    }
    if (status >= 200 && status < 300) {
        return "2xx";
    }
    if (status >= 400 && status < 500) {
        return "4xx";
    }
    if (status >= 500) {
        return "5xx";
    }
    return "other";
}

std::string_view transport_result(const http::TransportError& error) {
    switch (error.kind()) {
        case http::TransportError::Kind::refused:
            return "refused";
        case http::TransportError::Kind::timeout:
            return "timeout";
        case http::TransportError::Kind::broken:
        case http::TransportError::Kind::tls:
            return "broken";
    }
    return "broken";
}

/// A field of the gateway's JSON answer ("" if absent): {"id": …} on success, {"error": {"code": …}} otherwise.
std::string gateway_field(std::string_view body, std::string_view pointer) {
    thread_local simdjson::dom::parser parser;
    simdjson::dom::element document;
    if (parser.parse(body.data(), body.size()).get(document) != simdjson::SUCCESS) {
        return {};
    }
    std::string_view value;
    if (document.at_pointer(pointer).get(value) != simdjson::SUCCESS) {
        return {};
    }
    return std::string(value);
}

std::chrono::milliseconds retry_after(const http::Response& response) {
    const auto header = response.header("Retry-After");
    if (!header) {
        return {};
    }
    std::int64_t seconds = 0;
    const auto [end, error] = std::from_chars(header->data(), header->data() + header->size(), seconds);
    (void)end;
    return error == std::errc{} && seconds > 0 ? std::chrono::seconds(seconds) : std::chrono::milliseconds{};
}

/// What came of one call to the gateway: an answer that decides (2xx, 402 or another 4xx), or the Outcome the job
/// ends with when there is none yet.
using GatewayReply = std::variant<http::Response, Outcome>;

/// Sends `request` through the circuit breaker, under the job's deadline and trace. No answer, 409 (an earlier
/// attempt under the same key still running), 429 and 5xx are retries; a failed trial call only confirms the
/// outage the circuit knows about, so the job waits without using an attempt.
asio::awaitable<GatewayReply> call_gateway(JobContext& context, PaymentGateway& gateway, http::Request request,
                                           std::string_view operation) {
    auto permit = gateway.breaker().acquire();
    if (!permit.granted()) {
        GatewayReply wait = Outcome{Retry{permit.retry_after(), "the payment gateway's circuit is open", false}};
        co_return wait;
    }
    auto span = context.span(fmt::format("payment gateway {} {}", request.method, operation));
    span.set("http.request.method", request.method);
    span.set("url.path", request.path.substr(0, request.path.find('?')));
    span.set("conveyor.gateway.operation", std::string(operation));
    request.headers.emplace_back("traceparent", span.context().traceparent());
    if (!gateway.key().empty()) {
        request.headers.emplace_back("Authorization", fmt::format("Bearer {}", gateway.key()));
    }
    const auto sent = std::chrono::steady_clock::now();
    std::optional<http::Response> response;
    std::string transport_failure;
    try {
        response = co_await gateway.client().send(request, context.deadline());
    } catch (const http::TransportError& e) {
        gateway.count(operation, transport_result(e));
        transport_failure = e.what();
    }
    const bool counts_attempt = !permit.trial();
    if (!response) {
        span.fail(transport_failure);
        permit.failed();
        GatewayReply retry = Outcome{Retry{{}, fmt::format("payment gateway: {}", transport_failure), counts_attempt}};
        co_return retry;
    }
    gateway.observe(std::chrono::steady_clock::now() - sent);
    gateway.count(operation, status_class(response->status));
    const auto code = response->status;
    span.set("http.response.status_code", static_cast<std::int64_t>(code));
    if (code >= 400 && code != 402) {
        span.fail(fmt::format("answered {}", code));
    }
    if (code == 409) {
        // The gateway is still working on an earlier attempt with this key; its answer will be replayed to us.
        permit.succeeded();
        GatewayReply retry =
            Outcome{Retry{std::chrono::seconds(1), "payment gateway: 409, an attempt with this key is in progress"}};
        co_return retry;
    }
    if (code == 429 || code >= 500) {
        permit.failed();
        const auto body = response->body.substr(0, kMaxErrorBodyBytes);
        GatewayReply retry = Outcome{
            Retry{retry_after(*response), fmt::format("payment gateway answered {}: {}", code, body), counts_attempt}};
        co_return retry;
    }
    permit.succeeded();
    GatewayReply answer = std::move(*response);
    co_return answer;
}

/// The DeadLetter for an answer that is the same on every attempt (400, 401, 404, 422 …): a bug or a configuration
/// error.
DeadLetter refused_by_gateway(std::string_view operation, const http::Response& response) {
    return DeadLetter{"permanent_failure", fmt::format("payment gateway refused the {} with {}: {}", operation,
                                                       response.status, response.body.substr(0, kMaxErrorBodyBytes))};
}

std::string amount_text(std::int64_t cents) {
    return fmt::format("{}.{:02}", cents / 100, cents % 100);
}

/// Ends a payment job that found nothing to do, with its run on record in the inbox like any other: a duplicate is
/// then known as one, and a replay's canary sees that it ran.
asio::awaitable<Outcome> nothing_to_do(JobContext& context) {
    (void)co_await context.begin_transaction();
    co_return Success{};
}

/// The charge is captured: record it and let the saga go on (confirm, receipt). A charge that arrives after its
/// order was cancelled (a late answer, a replayed job) is recorded and refunded; the order stays cancelled.
asio::awaitable<Outcome> record_capture(JobContext& context, const Charge& charge, const std::string& charge_id,
                                        const std::string& idempotency_key) {
    auto* transaction = co_await context.begin_transaction();
    if (transaction == nullptr) {
        co_return Success{};
    }
    auto order = co_await lock_order(*transaction, charge.order_id);
    if (!order) {
        throw PermanentError(fmt::format("order {} vanished after it was charged ({})", charge.order_id, charge_id));
    }
    const auto recorded = co_await transaction->query(
        "INSERT INTO shop.payments (order_id, status, charge_id, amount_cents, currency, idempotency_key) "
        "VALUES ($1, 'captured', $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
        charge.order_id, charge_id, charge.amount_cents, charge.currency, idempotency_key);
    if (recorded.affected() == 0) {
        co_return Success{};  // recorded by an earlier attempt or another charge job of this order
    }
    const boost::json::object money{{"customer_id", order->customer_id},
                                    {"currency", std::string(charge.currency)},
                                    {"amount_cents", charge.amount_cents},
                                    {"charge_id", charge_id}};
    if (order->status == OrderStatus::cancelled) {
        const std::vector<DomainEvent> late{{"LatePaymentCaptured", money}};
        const auto events = co_await advance_order(*transaction, *order, OrderStatus::cancelled, {}, late);
        context.emit("payments.refund", to_json({{"order_id", order->id}}));
        emit_projection_update(context, events);
        context.log().warn("order {} was charged ({}) after it was cancelled; refunding", order->id, charge_id);
        co_return Success{};
    }
    const std::vector<DomainEvent> captured{{"PaymentCaptured", money}};
    const auto events = co_await advance_order(*transaction, *order, OrderStatus::paid, {}, captured);
    context.emit("orders.confirm", to_json({{"order_id", order->id}}));
    emit_order_email(context, "order_confirmed", *order,
                     {{"amount", amount_text(charge.amount_cents)},
                      {"currency", std::string(charge.currency)},
                      {"charge_id", charge_id}});
    emit_projection_update(context, events);
    co_return Success{};
}

/// The card was declined: a business outcome, not a failure. The order is cancelled (its stock released, the
/// customer told) by the compensating orders.cancel.
asio::awaitable<Outcome> record_decline(JobContext& context, const Charge& charge, const std::string& decline_code,
                                        const std::string& idempotency_key) {
    auto* transaction = co_await context.begin_transaction();
    if (transaction == nullptr) {
        co_return Success{};
    }
    auto order = co_await lock_order(*transaction, charge.order_id);
    if (!order || order->status != OrderStatus::reserved) {
        co_return Success{};
    }
    const auto recorded = co_await transaction->query(
        "INSERT INTO shop.payments (order_id, status, amount_cents, currency, idempotency_key, decline_code) "
        "VALUES ($1, 'declined', $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
        charge.order_id, charge.amount_cents, charge.currency, idempotency_key, decline_code);
    if (recorded.affected() == 0) {
        co_return Success{};  // another charge job for this order recorded the decline and started the cancel
    }
    const std::vector<DomainEvent> declined{
        {"PaymentDeclined", {{"customer_id", order->customer_id}, {"decline_code", decline_code}}}};
    const auto events = co_await advance_order(*transaction, *order, OrderStatus::reserved, {}, declined);
    const auto reason = fmt::format("payment declined ({})", decline_code);
    context.emit("orders.cancel", to_json({{"order_id", order->id}, {"reason", reason}}));
    emit_projection_update(context, events);
    context.log().info("order {}: payment declined ({}); cancelling", order->id, decline_code);
    co_return Success{};
}

/// payments.charge: asks the gateway to charge the order, under an idempotency key derived from the order, so every
/// attempt (and any duplicate of the job) asks for the same charge and the customer pays once. The gateway call
/// happens before the job's transaction begins: no database connection waits on it.
asio::awaitable<Outcome> charge_order(JobContext& context, PaymentGateway& gateway) {
    PayloadReader reader(context.payload());
    const auto charge = read_charge(reader);
    if (!charge) {
        Outcome invalid = DeadLetter{"invalid_payload", reader.error().value_or("")};
        co_return invalid;
    }
    const auto current = co_await context.database().query(
        "SELECT status, total_cents, currency FROM shop.orders WHERE id = $1", charge->order_id);
    if (current.rows() == 0) {
        Outcome unknown = DeadLetter{"invalid_payload", fmt::format("no order '{}'", charge->order_id)};
        co_return unknown;
    }
    const auto status = parse_order_status(current.text(0, 0)).value_or(OrderStatus::placed);
    if (status != OrderStatus::reserved) {
        context.log().info("order {} is {}; nothing to charge", charge->order_id, to_string(status));
        auto outcome = co_await nothing_to_do(context);
        co_return outcome;
    }
    if (current.integer(0, 1) != charge->amount_cents || current.text(0, 2) != charge->currency) {
        Outcome mismatch = DeadLetter{
            "invalid_payload", fmt::format("order {} totals {} {}, not {} {}", charge->order_id, current.integer(0, 1),
                                           current.text(0, 2), charge->amount_cents, charge->currency)};
        co_return mismatch;
    }
    const auto idempotency_key = fmt::format("conveyor-order-{}", charge->order_id);
    http::Request request;
    request.path = "/v1/charges";
    request.headers.emplace_back("Idempotency-Key", idempotency_key);
    request.body = to_json({{"amount_cents", charge->amount_cents},
                            {"currency", std::string(charge->currency)},
                            {"order_id", std::string(charge->order_id)},
                            {"customer_id", std::string(charge->customer_id)}});
    auto reply = co_await call_gateway(context, gateway, std::move(request), "charge");
    if (auto* outcome = std::get_if<Outcome>(&reply)) {
        co_return std::move(*outcome);
    }
    const auto& response = std::get<http::Response>(reply);
    if (response.status >= 200 && response.status < 300) {
        const auto charge_id = gateway_field(response.body, "/id");
        if (charge_id.empty()) {
            Outcome retry = Retry{{}, fmt::format("payment gateway answered {} without a charge id", response.status)};
            co_return retry;
        }
        auto outcome = co_await record_capture(context, *charge, charge_id, idempotency_key);
        co_return outcome;
    }
    if (response.status == 402) {
        auto decline_code = gateway_field(response.body, "/error/code");
        if (decline_code.empty()) {
            decline_code = "declined";
        }
        auto outcome = co_await record_decline(context, *charge, decline_code, idempotency_key);
        co_return outcome;
    }
    Outcome refused = refused_by_gateway("charge", response);
    co_return refused;
}

/// A charge to refund: the one on record, or one the gateway made without our hearing of it.
struct ChargeToRefund {
    std::string id;
    std::int64_t amount_cents = 0;
    std::string currency;
    bool on_record = false;
};

/// The charges the gateway made for the order (GET /v1/charges?order_id=…), or the Outcome the job ends with.
asio::awaitable<std::variant<std::vector<ChargeToRefund>, Outcome>> look_up_charges(JobContext& context,
                                                                                    PaymentGateway& gateway,
                                                                                    std::string_view order_id) {
    http::Request request;
    request.method = "GET";
    request.path = fmt::format("/v1/charges?order_id={}", order_id);  // an identifier: nothing to escape
    auto reply = co_await call_gateway(context, gateway, std::move(request), "lookup");
    if (auto* outcome = std::get_if<Outcome>(&reply)) {
        std::variant<std::vector<ChargeToRefund>, Outcome> failed = std::move(*outcome);
        co_return failed;
    }
    const auto& response = std::get<http::Response>(reply);
    thread_local simdjson::dom::parser parser;
    simdjson::dom::array listed;
    if (response.status != 200 || parser.parse(response.body).at_pointer("/data").get(listed) != simdjson::SUCCESS) {
        std::variant<std::vector<ChargeToRefund>, Outcome> refused = Outcome{refused_by_gateway("lookup", response)};
        co_return refused;
    }
    std::vector<ChargeToRefund> charges;
    for (const auto item : listed) {
        std::string_view id;
        std::string_view status;
        std::string_view currency;
        std::int64_t amount = 0;
        if (item["id"].get(id) == simdjson::SUCCESS && item["status"].get(status) == simdjson::SUCCESS &&
            status == "succeeded" && item["amount_cents"].get(amount) == simdjson::SUCCESS &&
            item["currency"].get(currency) == simdjson::SUCCESS) {
            charges.push_back({std::string(id), amount, std::string(currency), false});
        }
    }
    std::variant<std::vector<ChargeToRefund>, Outcome> found = std::move(charges);
    co_return found;
}

/// The refund is made: record it, and end a refunding order's saga (refunded, the customer told).
asio::awaitable<Outcome> record_refund(JobContext& context, std::string_view order_id, const ChargeToRefund& charge,
                                       const std::string& refund_id) {
    auto* transaction = co_await context.begin_transaction();
    if (transaction == nullptr) {
        co_return Success{};
    }
    auto order = co_await lock_order(*transaction, order_id);
    if (!order) {
        throw PermanentError(fmt::format("order {} vanished after it was refunded ({})", order_id, refund_id));
    }
    const auto key = fmt::format("conveyor-order-{}", order_id);
    const auto recorded = co_await transaction->query(
        "INSERT INTO shop.payments AS p (order_id, status, charge_id, amount_cents, currency, idempotency_key, "
        "  refund_id, refunded_at) VALUES ($1, 'refunded', $2, $3, $4, $5, $6, now()) "
        "ON CONFLICT (order_id) DO UPDATE SET status = 'refunded', charge_id = excluded.charge_id, "
        "  refund_id = excluded.refund_id, refunded_at = excluded.refunded_at WHERE p.status <> 'refunded'",
        order_id, charge.id, charge.amount_cents, charge.currency, key, refund_id);
    if (recorded.affected() == 0) {
        co_return Success{};  // recorded by an earlier attempt or another refund job of this order
    }
    const boost::json::object money{{"customer_id", order->customer_id},
                                    {"currency", charge.currency},
                                    {"amount_cents", charge.amount_cents},
                                    {"charge_id", charge.id}};
    std::vector<DomainEvent> refunded;
    if (!charge.on_record) {
        refunded.push_back({"LatePaymentCaptured", money});
    }
    auto refund = money;
    refund["refund_id"] = refund_id;
    refunded.push_back({"PaymentRefunded", std::move(refund)});
    auto status = order->status;
    if (status == OrderStatus::refunding) {
        status = OrderStatus::refunded;
        refunded.push_back({"OrderRefunded", {}});
    }
    const auto events = co_await advance_order(*transaction, *order, status, {}, refunded);
    emit_order_email(
        context, "order_refunded", *order,
        {{"amount", amount_text(charge.amount_cents)}, {"currency", charge.currency}, {"refund_id", refund_id}});
    emit_projection_update(context, events);
    context.log().info("order {}: charge {} refunded ({})", order->id, charge.id, refund_id);
    co_return Success{};
}

/// Which charge of the order to refund: the captured one on record; none if it was declined or refunded already;
/// otherwise whatever the gateway says it charged (a charge whose answer never reached us).
asio::awaitable<std::variant<std::vector<ChargeToRefund>, Outcome>> charges_to_refund(JobContext& context,
                                                                                      PaymentGateway& gateway,
                                                                                      std::string_view order_id) {
    const auto payment = co_await context.database().query(
        "SELECT status, coalesce(charge_id, ''), amount_cents, currency FROM shop.payments WHERE order_id = $1",
        order_id);
    if (payment.rows() == 0) {
        auto found = co_await look_up_charges(context, gateway, order_id);
        co_return found;
    }
    std::vector<ChargeToRefund> charges;
    if (payment.text(0, 0) == "captured") {
        charges.push_back(
            {std::string(payment.text(0, 1)), payment.integer(0, 2), std::string(payment.text(0, 3)), true});
    }
    std::variant<std::vector<ChargeToRefund>, Outcome> on_record = std::move(charges);
    co_return on_record;
}

/// payments.refund: refunds the order's charge in full, under an idempotency key derived from the charge, so every
/// attempt and every duplicate of the job asks for the same refund and the customer is refunded once.
asio::awaitable<Outcome> refund_order(JobContext& context, PaymentGateway& gateway) {
    PayloadReader reader(context.payload());
    const auto order_id = std::string(reader.identifier("order_id").value_or(""));
    auto found = co_await charges_to_refund(context, gateway, order_id);
    if (auto* outcome = std::get_if<Outcome>(&found)) {
        co_return std::move(*outcome);
    }
    const auto& charges = std::get<std::vector<ChargeToRefund>>(found);
    if (charges.empty()) {
        context.log().info("order {}: no charge to refund", order_id);
        auto outcome = co_await nothing_to_do(context);
        co_return outcome;
    }
    const auto& charge = charges.front();
    http::Request request;
    request.path = "/v1/refunds";
    request.headers.emplace_back("Idempotency-Key", fmt::format("conveyor-refund-{}", charge.id));
    request.body = to_json({{"charge_id", charge.id}, {"amount_cents", charge.amount_cents}});
    auto reply = co_await call_gateway(context, gateway, std::move(request), "refund");
    if (auto* outcome = std::get_if<Outcome>(&reply)) {
        co_return std::move(*outcome);
    }
    const auto& response = std::get<http::Response>(reply);
    if (response.status >= 200 && response.status < 300) {
        const auto refund_id = gateway_field(response.body, "/id");
        if (refund_id.empty()) {
            Outcome retry = Retry{{}, fmt::format("payment gateway answered {} without a refund id", response.status)};
            co_return retry;
        }
        auto outcome = co_await record_refund(context, order_id, charge, refund_id);
        co_return outcome;
    }
    if (response.status == 402) {
        // Only a person can settle this with the customer; the dead letter is their work item.
        Outcome declined =
            DeadLetter{"refund_declined", fmt::format("payment gateway declined the refund of charge {} ({})",
                                                      charge.id, gateway_field(response.body, "/error/code"))};
        co_return declined;
    }
    Outcome refused = refused_by_gateway("refund", response);
    co_return refused;
}

}  // namespace

std::optional<std::string> validate_refund(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.identifier("order_id");
    reader.only({"order_id"});
    return reader.error();
}

void register_payment_jobs(JobRegistry& registry, const Settings& settings, prometheus::Registry& metrics,
                           asio::any_io_executor executor) {
    auto gateway = std::make_shared<PaymentGateway>(settings, metrics, std::move(executor));
    JobOptions options;
    options.transaction = TransactionMode::on_demand;
    options.validate = validate_charge;
    options.compensate = cancel_order_when("payments.charge");
    // Room for one gateway request and the transaction that records it.
    options.timeout = settings.gateway.timeout + std::chrono::seconds(10);
    registry.add(
        "payments.charge",
        [gateway](JobContext& context) -> asio::awaitable<Outcome> {
            auto outcome = co_await charge_order(context, *gateway);
            co_return outcome;
        },
        options);
    options.validate = validate_refund;
    options.compensate = nullptr;
    // A lookup, a refund request and the transaction that records it.
    options.timeout = 2 * settings.gateway.timeout + std::chrono::seconds(10);
    registry.add(
        "payments.refund",
        [gateway](JobContext& context) -> asio::awaitable<Outcome> {
            auto outcome = co_await refund_order(context, *gateway);
            co_return outcome;
        },
        options);
}

}  // namespace conveyor::jobs
