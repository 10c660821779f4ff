#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "conveyor/core/config.hpp"
#include "conveyor/core/topology.hpp"
#include "families.hpp"

namespace conveyor::jobs {

namespace {

/// An option holding a duration ("10s", "500ms"), stored into `target` once parsed.
CLI::Option* add_duration(CLI::App& app, const std::string& flag, std::chrono::milliseconds& target,
                          const std::string& help, const std::string& env) {
    return app
        .add_option_function<std::string>(
            flag, [&target](const std::string& text) { target = parse_duration(text); }, help)
        ->envname(env)
        ->default_str(target.count() % 1000 == 0 ? fmt::format("{}s", target.count() / 1000)
                                                 : fmt::format("{}ms", target.count()))
        ->check(CLI::Validator(
            [](std::string& text) -> std::string {
                try {
                    return parse_duration(text).count() > 0 ? std::string() : "must be greater than zero";
                } catch (const std::invalid_argument& e) {
                    return e.what();
                }
            },
            "DURATION"));
}

}  // namespace

void add_options(CLI::App& app, Settings& settings) {
    app.add_option("--payment-gateway-url", settings.gateway.base_url, "Payment gateway base URL (http:// or https://)")
        ->envname("CONVEYOR_PAYMENT_GATEWAY_URL")
        ->capture_default_str()
        ->check(CLI::Validator(
            [](std::string& url) -> std::string {
                try {
                    http::ClientSettings candidate;
                    candidate.base_url = url;
                    const http::Client probe(boost::asio::system_executor(), candidate);
                    return {};
                } catch (const std::invalid_argument& e) {
                    return e.what();
                }
            },
            "URL"));
    add_duration(app, "--payment-gateway-timeout", settings.gateway.timeout, "Deadline of one gateway request",
                 "CONVEYOR_PAYMENT_GATEWAY_TIMEOUT");
    app.add_option("--payment-gateway-ca-file", settings.gateway.ca_file, "CA certificate (PEM) for an https gateway")
        ->envname("CONVEYOR_PAYMENT_GATEWAY_CA_FILE")
        ->check(CLI::ExistingFile);
    // Secrets: an explicit value is never shown.
    app.add_option("--payment-gateway-key", settings.gateway_key, "Bearer token sent to the gateway")
        ->envname("CONVEYOR_PAYMENT_GATEWAY_KEY")
        ->default_str("");
    app.add_option("--payment-circuit-failures", settings.gateway_circuit.failure_threshold,
                   "Gateway failures in a row that open the circuit (payment jobs then wait)")
        ->envname("CONVEYOR_PAYMENT_CIRCUIT_FAILURES")
        ->capture_default_str()
        ->check(CLI::Range(1U, 1000U));
    add_duration(app, "--payment-circuit-open-for", settings.gateway_circuit.open_for,
                 "How long an open circuit waits before one trial call", "CONVEYOR_PAYMENT_CIRCUIT_OPEN_FOR");
    app.add_option("--smtp-url", settings.smtp.url, "SMTP server (smtp:// with STARTTLS if offered, or smtps://)")
        ->envname("CONVEYOR_SMTP_URL")
        ->capture_default_str()
        ->check(CLI::Validator(
            [](std::string& url) -> std::string {
                return url.starts_with("smtp://") || url.starts_with("smtps://") ? std::string()
                                                                                 : "expected smtp:// or smtps://";
            },
            "URL"));
    app.add_option("--smtp-username", settings.smtp.username, "SMTP AUTH user name")->envname("CONVEYOR_SMTP_USERNAME");
    app.add_option("--smtp-password", settings.smtp.password, "SMTP AUTH password")
        ->envname("CONVEYOR_SMTP_PASSWORD")
        ->default_str("");
    app.add_option("--smtp-ca-file", settings.smtp.ca_file, "CA certificate (PEM) to verify the SMTP server")
        ->envname("CONVEYOR_SMTP_CA_FILE")
        ->check(CLI::ExistingFile);
    app.add_flag("--smtp-require-tls", settings.smtp.require_tls, "Refuse to send mail without TLS")
        ->envname("CONVEYOR_SMTP_REQUIRE_TLS");
    add_duration(app, "--smtp-timeout", settings.smtp.timeout, "Deadline of one SMTP delivery",
                 "CONVEYOR_SMTP_TIMEOUT");
    app.add_option("--smtp-connections", settings.smtp.threads, "SMTP deliveries at once")
        ->envname("CONVEYOR_SMTP_CONNECTIONS")
        ->capture_default_str()
        ->check(CLI::Range(std::size_t{1}, std::size_t{256}));
    app.add_option("--mail-from", settings.mail_from, "From: address of every email")
        ->envname("CONVEYOR_MAIL_FROM")
        ->capture_default_str();
    add_duration(app, "--order-timeout", settings.order_timeout,
                 "Time from an order's placing to its confirmation, past which the saga compensates it",
                 "CONVEYOR_ORDER_TIMEOUT")
        ->check(CLI::Validator(
            [](std::string& text) -> std::string {
                // The deadline waits in the delay ladder, which holds a message this long at most.
                const auto longest = std::chrono::duration_cast<std::chrono::milliseconds>(topology::kMaxDelay);
                return parse_duration(text) <= longest ? std::string()
                                                       : fmt::format("must be at most {} s (the delay ladder's reach)",
                                                                     topology::kMaxDelay.count());
            },
            "DURATION"));
}

void register_all(JobRegistry& registry, const Settings& settings, prometheus::Registry& metrics,
                  boost::asio::any_io_executor executor) {
    register_diag_jobs(registry);
    register_order_jobs(registry, settings);
    register_inventory_jobs(registry);
    register_payment_jobs(registry, settings, metrics, std::move(executor));
    register_email_jobs(registry, settings);
    register_email_retention_jobs(registry);
    register_projection_jobs(registry);
}

std::map<std::string, PayloadValidator, std::less<>> payload_validators() {
    JobRegistry registry;
    register_diag_jobs(registry);
    register_order_jobs(registry, Settings{});
    register_inventory_jobs(registry);
    register_email_retention_jobs(registry);
    register_projection_jobs(registry);
    std::map<std::string, PayloadValidator, std::less<>> validators;
    for (const auto& type : registry.types()) {
        validators.emplace(type, registry.find(type)->options.validate);
    }
    validators.emplace("payments.charge", validate_charge);
    validators.emplace("payments.refund", validate_refund);
    validators.emplace("emails.send", validate_send_email);
    return validators;
}

}  // namespace conveyor::jobs
