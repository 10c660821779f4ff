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
                        .Help("Charge requests to the payment gateway by result: an HTTP status class, 402, or a "
                              "transport failure (refused, timeout, broken)")
                        .Register(metrics)),
          latency_(prometheus::BuildHistogram()
                       .Name("conveyor_payment_gateway_request_seconds")
                       .Help("Time from sending a charge request to its complete response")
                       .Register(metrics)
                       .Add({}, prometheus::Histogram::BucketBoundaries{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                                        2.5, 5, 10, 30})) {}

    http::Client& client() noexcept { return client_; }
    const std::string& key() const noexcept { return key_; }
    CircuitBreaker& breaker() noexcept { return breaker_; }
    void count(std::string_view result) { requests_.Add({{"result", std::string(result)}}).Increment(); }
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

/// The charge is captured: record it, move the order to paid, and let the saga go on (confirm, receipt).
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
    if (order->status == OrderStatus::paid || order->status == OrderStatus::confirmed) {
        co_return Success{};
    }
    co_await transaction->query(
        "INSERT INTO shop.payments (order_id, status, charge_id, amount_cents, currency, idempotency_key) "
        "VALUES ($1, 'captured', $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
        charge.order_id, charge_id, charge.amount_cents, charge.currency, idempotency_key);
    if (order->status != OrderStatus::reserved) {
        // Cancelled by someone else while the gateway was charging: the money must go back by hand.
        context.log().error("order {} is {} but charge {} was captured for it: it needs a refund", order->id,
                            to_string(order->status), charge_id);
        co_return Success{};
    }
    const std::vector<DomainEvent> captured{{"PaymentCaptured",
                                             {{"customer_id", order->customer_id},
                                              {"currency", std::string(charge.currency)},
                                              {"amount_cents", charge.amount_cents},
                                              {"charge_id", charge_id}}}};
    const auto events = co_await advance_order(*transaction, *order, OrderStatus::paid, {}, captured);
    context.emit("orders.confirm", to_json({{"order_id", order->id}}));
    emit_order_email(context, "order_confirmed", *order,
                     {{"amount", fmt::format("{}.{:02}", charge.amount_cents / 100, charge.amount_cents % 100)},
                      {"currency", std::string(charge.currency)},
                      {"charge_id", charge_id}});
    emit_projection_update(context, events);
    co_return Success{};
}

/// The card was declined: a business outcome, not a failure. The order is cancelled (its stock released) by the
/// compensating orders.cancel, and the customer is told.
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
    emit_order_email(context, "payment_failed", *order, {{"reason", reason}});
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
        co_return Success{};
    }
    if (current.integer(0, 1) != charge->amount_cents || current.text(0, 2) != charge->currency) {
        Outcome mismatch = DeadLetter{
            "invalid_payload", fmt::format("order {} totals {} {}, not {} {}", charge->order_id, current.integer(0, 1),
                                           current.text(0, 2), charge->amount_cents, charge->currency)};
        co_return mismatch;
    }

    auto permit = gateway.breaker().acquire();
    if (!permit.granted()) {
        Outcome wait = Retry{permit.retry_after(), "the payment gateway's circuit is open", false};
        co_return wait;
    }
    const auto idempotency_key = fmt::format("conveyor-order-{}", charge->order_id);
    http::Request request;
    request.path = "/v1/charges";
    request.headers.emplace_back("Idempotency-Key", idempotency_key);
    request.headers.emplace_back("traceparent", context.trace().traceparent());
    if (!gateway.key().empty()) {
        request.headers.emplace_back("Authorization", fmt::format("Bearer {}", gateway.key()));
    }
    request.body = to_json({{"amount_cents", charge->amount_cents},
                            {"currency", std::string(charge->currency)},
                            {"order_id", std::string(charge->order_id)},
                            {"customer_id", std::string(charge->customer_id)}});
    const auto sent = std::chrono::steady_clock::now();
    std::optional<http::Response> response;
    std::string transport_failure;
    try {
        response = co_await gateway.client().send(request, context.deadline());
    } catch (const http::TransportError& e) {
        gateway.count(transport_result(e));
        transport_failure = e.what();
    }
    // A failed trial call only confirms the outage the circuit already knows about: the job waits, uncounted.
    const bool counts_attempt = !permit.trial();
    if (!response) {
        permit.failed();
        Outcome retry = Retry{{}, fmt::format("payment gateway: {}", transport_failure), counts_attempt};
        co_return retry;
    }
    gateway.observe(std::chrono::steady_clock::now() - sent);
    gateway.count(status_class(response->status));
    const auto code = response->status;
    if (code >= 200 && code < 300) {
        permit.succeeded();
        const auto charge_id = gateway_field(response->body, "/id");
        if (charge_id.empty()) {
            Outcome retry = Retry{{}, fmt::format("payment gateway answered {} without a charge id", code)};
            co_return retry;
        }
        auto outcome = co_await record_capture(context, *charge, charge_id, idempotency_key);
        co_return outcome;
    }
    if (code == 402) {
        permit.succeeded();
        auto decline_code = gateway_field(response->body, "/error/code");
        if (decline_code.empty()) {
            decline_code = "declined";
        }
        auto outcome = co_await record_decline(context, *charge, decline_code, idempotency_key);
        co_return outcome;
    }
    const auto body = response->body.substr(0, kMaxErrorBodyBytes);
    if (code == 409) {
        // The gateway is still working on an earlier attempt with this key; its answer will be replayed to us.
        permit.succeeded();
        Outcome retry = Retry{std::chrono::seconds(1), "payment gateway: 409, an attempt with this key is in progress"};
        co_return retry;
    }
    if (code == 429 || code >= 500) {
        permit.failed();
        Outcome retry =
            Retry{retry_after(*response), fmt::format("payment gateway answered {}: {}", code, body), counts_attempt};
        co_return retry;
    }
    // Any other answer (400, 401, 422 …) is the same on every attempt: a bug or a configuration error.
    permit.succeeded();
    Outcome refused =
        DeadLetter{"permanent_failure", fmt::format("payment gateway refused the charge with {}: {}", code, body)};
    co_return refused;
}

}  // namespace

void register_payment_jobs(JobRegistry& registry, const Settings& settings, prometheus::Registry& metrics,
                           asio::any_io_executor executor) {
    auto gateway = std::make_shared<PaymentGateway>(settings, metrics, std::move(executor));
    JobOptions options;
    options.transaction = TransactionMode::on_demand;
    options.validate = validate_charge;
    // Room for one gateway request and the transaction that records it.
    options.timeout = settings.gateway.timeout + std::chrono::seconds(10);
    registry.add(
        "payments.charge",
        [gateway](JobContext& context) -> asio::awaitable<Outcome> {
            auto outcome = co_await charge_order(context, *gateway);
            co_return outcome;
        },
        options);
}

}  // namespace conveyor::jobs
