#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <simdjson.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "test_support.hpp"

/// The outside world the jobs talk to, played by real local servers speaking the real protocols: the payment
/// gateway (HTTP/1.1, optionally TLS) and a mail server (SMTP), both from deploy/local.
namespace conveyor::testing {

/// The local stack's state folder (certificates, pid files).
inline std::filesystem::path state_dir() {
    const char* configured = std::getenv("CONVEYOR_STATE_DIR");
    return configured != nullptr ? std::filesystem::path(configured) : source_dir() / ".state";
}

/// Waits for a server to write the port it bound.
inline std::uint16_t read_port_file(const std::filesystem::path& file, Process& server) {
    std::uint16_t port = 0;
    eventually(
        [&] {
            std::ifstream in(file);
            in >> port;
            return port != 0 || !server.running();
        },
        std::chrono::seconds(15));
    if (port == 0) {
        ADD_FAILURE() << "no port in " << file << "; the server's log:\n" << server.log();
    }
    return port;
}

inline std::filesystem::path scratch_dir(const std::string& name) {
    auto dir = std::filesystem::temp_directory_path() / fmt::format("conveyor-{}-{}", name, ::getpid());
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

/// deploy/local/payment_gateway.py: charges with idempotency keys, switchable faults on its control port.
class PaymentGatewayServer {
  public:
    explicit PaymentGatewayServer(bool tls = false) : dir_(scratch_dir(tls ? "gateway-tls" : "gateway")), tls_(tls) {
        std::vector<std::string> args{(source_dir() / "deploy/local/payment_gateway.py").string(), "--port-file",
                                      (dir_ / "port").string(), "--control-port-file",
                                      (dir_ / "control-port").string()};
        if (tls) {
            args.insert(args.end(), {"--tls-cert", (state_dir() / "rabbitmq/tls/server.pem").string(), "--tls-key",
                                     (state_dir() / "rabbitmq/tls/server.key").string()});
        }
        process_ = std::make_unique<Process>("/usr/bin/python3", args, dir_ / "log");
        port_ = read_port_file(dir_ / "port", *process_);
        control_port_ = read_port_file(dir_ / "control-port", *process_);
    }
    ~PaymentGatewayServer() {
        process_->signal(SIGTERM);
        process_->wait(std::chrono::seconds(5));
        std::filesystem::remove_all(dir_);
    }
    PaymentGatewayServer(const PaymentGatewayServer&) = delete;
    PaymentGatewayServer& operator=(const PaymentGatewayServer&) = delete;

    [[nodiscard]] std::string url() const { return fmt::format("{}://127.0.0.1:{}", tls_ ? "https" : "http", port_); }
    [[nodiscard]] static std::string ca_file() { return (state_dir() / "rabbitmq/tls/ca.pem").string(); }

    /// Merges settings into the gateway's behaviour, e.g. {"fail_next": 2}.
    void control(const std::string& json) const {
        const auto response = http_post(control_port_, "/control", json);
        ASSERT_TRUE(response && response->first == 200)
            << "gateway control " << json << ": " << (response ? response->second : "no answer");
    }

    /// A number from GET /stats by JSON pointer, e.g. "/charges" or "/by_status/503" (0 if absent).
    [[nodiscard]] std::int64_t stat(const std::string& pointer) const {
        const auto response = http_get(control_port_, "/stats");
        if (!response) {
            ADD_FAILURE() << "the gateway's control port does not answer";
            return -1;
        }
        simdjson::dom::parser parser;
        std::int64_t value = 0;
        if (parser.parse(response->second).at_pointer(pointer).get(value) != simdjson::SUCCESS) {
            return 0;
        }
        return value;
    }

    /// GET /charges?order_id=: the charges created for an order, as the gateway lists them (JSON array).
    [[nodiscard]] std::string charges_of(const std::string& order_id) const {
        const auto response = http_get(control_port_, "/charges?order_id=" + order_id);
        return response ? response->second : std::string();
    }

  private:
    std::filesystem::path dir_;
    bool tls_;
    std::unique_ptr<Process> process_;
    std::uint16_t port_ = 0;
    std::uint16_t control_port_ = 0;
};

struct CapturedMail {
    std::string to;
    std::string template_name;
    std::string subject;
    std::string message_id;
    std::string body;
};

/// deploy/local/smtp_sink.py: accepts mail and appends each message to a JSON-lines mailbox. Recipients with
/// "+tempfail" get 451, "+reject" 550, and "+flaky" 451 once.
class SmtpSink {
  public:
    SmtpSink() : dir_(scratch_dir("smtp")) {
        process_ = std::make_unique<Process>(
            "/usr/bin/python3",
            std::vector<std::string>{(source_dir() / "deploy/local/smtp_sink.py").string(), "--port-file",
                                     (dir_ / "port").string(), "--mailbox", (dir_ / "mailbox.jsonl").string()},
            dir_ / "log");
        port_ = read_port_file(dir_ / "port", *process_);
    }
    ~SmtpSink() {
        process_->signal(SIGTERM);
        process_->wait(std::chrono::seconds(5));
        std::filesystem::remove_all(dir_);
    }
    SmtpSink(const SmtpSink&) = delete;
    SmtpSink& operator=(const SmtpSink&) = delete;

    [[nodiscard]] std::string url() const { return fmt::format("smtp://127.0.0.1:{}", port_); }

    [[nodiscard]] std::vector<CapturedMail> mails() const {
        std::vector<CapturedMail> mails;
        std::ifstream in(dir_ / "mailbox.jsonl");
        simdjson::dom::parser parser;
        for (std::string line; std::getline(in, line);) {
            simdjson::dom::element mail;
            if (parser.parse(line).get(mail) != simdjson::SUCCESS) {
                continue;  // a line being written
            }
            CapturedMail captured;
            std::string_view text;
            if (mail["rcpt_tos"].at(0).get(text) == simdjson::SUCCESS) {
                captured.to = text;
            }
            if (mail["headers"]["X-Conveyor-Template"].get(text) == simdjson::SUCCESS) {
                captured.template_name = text;
            }
            if (mail["subject"].get(text) == simdjson::SUCCESS) {
                captured.subject = text;
            }
            if (mail["message_id"].get(text) == simdjson::SUCCESS) {
                captured.message_id = text;
            }
            if (mail["body"].get(text) == simdjson::SUCCESS) {
                captured.body = text;
            }
            mails.push_back(std::move(captured));
        }
        return mails;
    }

    [[nodiscard]] std::size_t count(const std::string& template_name) const {
        const auto all = mails();
        return static_cast<std::size_t>(std::count_if(
            all.begin(), all.end(), [&](const CapturedMail& mail) { return mail.template_name == template_name; }));
    }

  private:
    std::filesystem::path dir_;
    std::unique_ptr<Process> process_;
    std::uint16_t port_ = 0;
};

/// One span as deploy/local/otlp_receiver.py kept it.
struct ReceivedSpan {
    std::string trace_id;
    std::string span_id;
    std::string parent_span_id;
    std::string name;
    std::string kind;
    std::string service;
    std::int64_t status = 0;  ///< OTLP's: 0 unset, 1 ok, 2 error
};

/// deploy/local/otlp_receiver.py: an OTLP/HTTP traces endpoint that checks each request against the OTLP JSON
/// encoding and keeps the spans.
class OtlpReceiver {
  public:
    OtlpReceiver() : dir_(scratch_dir("otlp")) {
        process_ = std::make_unique<Process>(
            "/usr/bin/python3",
            std::vector<std::string>{(source_dir() / "deploy/local/otlp_receiver.py").string(), "--port", "0",
                                     "--port-file", (dir_ / "port").string()},
            dir_ / "log");
        port_ = read_port_file(dir_ / "port", *process_);
    }
    ~OtlpReceiver() {
        process_->signal(SIGTERM);
        process_->wait(std::chrono::seconds(5));
        std::filesystem::remove_all(dir_);
    }
    OtlpReceiver(const OtlpReceiver&) = delete;
    OtlpReceiver& operator=(const OtlpReceiver&) = delete;

    [[nodiscard]] std::string url() const { return fmt::format("http://127.0.0.1:{}", port_); }

    /// Merges settings into its behaviour, e.g. {"fail_next": 3}.
    void control(const std::string& json) const {
        const auto response = http_post(port_, "/control", json);
        ASSERT_TRUE(response && response->first == 200)
            << "otlp receiver control " << json << ": " << (response ? response->second : "no answer");
    }

    /// A number from GET /stats ("/spans", "/rejected" …), 0 if absent.
    [[nodiscard]] std::int64_t stat(const std::string& pointer) const {
        const auto response = http_get(port_, "/stats");
        simdjson::dom::parser parser;
        std::int64_t value = 0;
        if (!response || parser.parse(response->second).at_pointer(pointer).get(value) != simdjson::SUCCESS) {
            return 0;
        }
        return value;
    }

    /// The spans kept of one trace.
    [[nodiscard]] std::vector<ReceivedSpan> spans_of(const std::string& trace_id) const {
        std::vector<ReceivedSpan> spans;
        const auto response = http_get(port_, "/spans?trace_id=" + trace_id);
        simdjson::dom::parser parser;
        simdjson::dom::array listed;
        if (!response || parser.parse(response->second).get(listed) != simdjson::SUCCESS) {
            return spans;
        }
        for (const auto item : listed) {
            ReceivedSpan span;
            span.trace_id = std::string(std::string_view(item["trace_id"]));
            span.span_id = std::string(std::string_view(item["span_id"]));
            span.parent_span_id = std::string(std::string_view(item["parent_span_id"]));
            span.name = std::string(std::string_view(item["name"]));
            span.kind = std::string(std::string_view(item["kind"]));
            span.service = std::string(std::string_view(item["service"]));
            span.status = std::int64_t(item["status"]);
            spans.push_back(std::move(span));
        }
        return spans;
    }

    /// The trace as the receiver renders it: a text timeline.
    [[nodiscard]] std::string render(const std::string& trace_id) const {
        const auto response = http_get(port_, "/render?trace_id=" + trace_id);
        return response ? response->second : std::string();
    }

  private:
    std::filesystem::path dir_;
    std::unique_ptr<Process> process_;
    std::uint16_t port_ = 0;
};

}  // namespace conveyor::testing
