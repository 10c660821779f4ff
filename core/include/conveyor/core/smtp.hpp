#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>

namespace conveyor::smtp {

struct Settings {
    /// smtp:// (STARTTLS when the server offers it, required with require_tls) or smtps:// (implicit TLS).
    std::string url = "smtp://127.0.0.1:2525";
    std::string username;
    std::string password;
    /// PEM CA file to verify the server's certificate; empty uses the system's CA store.
    std::string ca_file;
    bool require_tls = false;
    /// Deadline of one delivery: connect, the SMTP dialogue and the message.
    std::chrono::milliseconds timeout{30'000};
    /// Deliveries at once: each runs libcurl's blocking transfer on a thread of the client's own pool.
    std::size_t threads = 4;
};

struct Mail {
    std::string from;
    std::string to;
    /// The whole RFC 5322 message, headers and body, lines ending in CRLF.
    std::string message;
};

/// The server refused the mail or could not be reached. `transient()` follows SMTP's classes: a 4xx reply or no
/// reply at all may succeed later; a 5xx reply will not.
class Error : public std::runtime_error {
  public:
    Error(int reply_code, bool maybe_delivered, const std::string& what)
        : std::runtime_error(what), reply_code_(reply_code), maybe_delivered_(maybe_delivered) {}
    /// The server's last reply code, 0 if there was none (refused, timed out).
    [[nodiscard]] int reply_code() const noexcept { return reply_code_; }
    [[nodiscard]] bool transient() const noexcept { return reply_code_ < 500; }
    /// Whether the server may have taken the mail anyway: the transfer broke off after the message went out
    /// (no final reply). A refusal (a 4xx or 5xx reply) or a failure to connect never delivered it.
    [[nodiscard]] bool maybe_delivered() const noexcept { return maybe_delivered_; }

  private:
    int reply_code_;
    bool maybe_delivered_;
};

/// Delivers mail over SMTP with libcurl (the packaged SMTP client that handles STARTTLS, AUTH and dot-stuffing).
/// libcurl's easy interface blocks, so transfers run on the client's own threads and never on an I/O thread;
/// the awaiting coroutine resumes on its own executor.
class Client {
  public:
    /// Throws std::invalid_argument for a URL that is not smtp:// or smtps://.
    explicit Client(Settings settings);
    ~Client();
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    /// Throws smtp::Error when the mail was not accepted.
    boost::asio::awaitable<void> send(const Mail& mail, std::chrono::steady_clock::time_point deadline);

  private:
    class Impl;
    std::shared_ptr<Impl> impl_;
};

/// "j***@example.com": enough to tell recipients apart in a log, not enough to harvest them.
[[nodiscard]] std::string masked_address(std::string_view address);

}  // namespace conveyor::smtp
