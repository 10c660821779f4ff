#pragma once

#include <prometheus/registry.h>

#include <boost/asio/any_io_executor.hpp>
#include <map>
#include <string>
#include <vector>

#include "conveyor/core/circuit_breaker.hpp"
#include "conveyor/core/http_client.hpp"
#include "conveyor/core/job.hpp"
#include "conveyor/core/migrations.hpp"
#include "conveyor/core/smtp.hpp"

namespace CLI {
class App;
}

namespace conveyor::jobs {

/// What the job families need from the outside world, from flags or CONVEYOR_* environment variables.
struct Settings {
    /// The payment gateway (CONVEYOR_PAYMENT_GATEWAY_URL, _TIMEOUT, _CA_FILE).
    http::ClientSettings gateway = [] {
        http::ClientSettings local_gateway;
        local_gateway.base_url = "http://127.0.0.1:8085";
        return local_gateway;
    }();
    /// Bearer token for the gateway (CONVEYOR_PAYMENT_GATEWAY_KEY); never logged.
    std::string gateway_key;
    /// When payment jobs stop calling a failing gateway (CONVEYOR_PAYMENT_CIRCUIT_FAILURES, _OPEN_FOR).
    CircuitBreaker::Settings gateway_circuit;
    /// Outgoing mail (CONVEYOR_SMTP_URL, _USERNAME, _PASSWORD, _CA_FILE, _REQUIRE_TLS, _TIMEOUT, _CONNECTIONS).
    smtp::Settings smtp;
    /// The From: of every email (CONVEYOR_MAIL_FROM).
    std::string mail_from = "Conveyor Shop <shop@conveyor.invalid>";
    /// How long an order may take from placed to confirmed before the saga compensates it
    /// (CONVEYOR_ORDER_TIMEOUT): its stock released, and its charge refunded if one was made.
    std::chrono::milliseconds order_timeout{std::chrono::minutes(15)};
};

/// Adds the job families' options to a binary's command line (conveyor-worker's).
void add_options(CLI::App& app, Settings& settings);

/// diag.noop, diag.sleep, diag.fail, diag.ledger and diag.crash: jobs for operators, tests and benchmarks.
void register_diag_jobs(JobRegistry& registry);

/// Every job family this build knows. Payment jobs register their circuit breaker's gauge in `metrics` and make
/// their HTTP connections on `executor`. Throws std::invalid_argument for unusable settings.
void register_all(JobRegistry& registry, const Settings& settings, prometheus::Registry& metrics,
                  boost::asio::any_io_executor executor);

/// Every job type this build knows, with its payload validator and without its handler (no client is created): what
/// a service that enqueues jobs (conveyor-scheduler) checks a job against before accepting it.
[[nodiscard]] std::map<std::string, PayloadValidator, std::less<>> payload_validators();

/// The schema the job families need (jobs/migrations), applied by `conveyor migrate` after Conveyor's own.
[[nodiscard]] std::vector<pg::Migration> migrations();

}  // namespace conveyor::jobs
