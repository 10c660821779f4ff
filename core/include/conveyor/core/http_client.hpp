#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace conveyor::http {

/// One origin (scheme, host, port) that a Client talks to.
struct ClientSettings {
    /// http:// or https:// URL; its path is the prefix of every request target (e.g. https://pay.example/api).
    std::string base_url;
    /// Deadline of one request: connect, TLS handshake, write and read together.
    std::chrono::milliseconds timeout{10'000};
    /// PEM CA file to verify an https:// server; empty uses the system's CA store.
    std::string ca_file;
    /// Idle keep-alive connections kept for reuse.
    std::size_t max_idle_connections = 64;
    /// Largest response body accepted.
    std::size_t max_response_bytes = std::size_t{1024} * 1024;
    std::string user_agent = "conveyor";
};

struct Request {
    std::string method = "POST";
    /// Appended to the base URL's path, e.g. "/v1/charges".
    std::string path;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    std::string content_type = "application/json";
};

struct Response {
    unsigned status = 0;
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;

    /// The first header of that name (case-insensitive), if any.
    [[nodiscard]] std::optional<std::string_view> header(std::string_view name) const;
};

/// The request got no HTTP response: it could not connect, timed out, or the connection broke.
class TransportError : public std::runtime_error {
  public:
    enum class Kind { refused, timeout, broken, tls };
    TransportError(Kind kind, bool may_have_arrived, const std::string& what)
        : std::runtime_error(what), kind_(kind), may_have_arrived_(may_have_arrived) {}

    [[nodiscard]] Kind kind() const noexcept { return kind_; }
    /// False only when the server cannot have seen the request (e.g. the connection was refused).
    [[nodiscard]] bool may_have_arrived() const noexcept { return may_have_arrived_; }

  private:
    Kind kind_;
    bool may_have_arrived_;
};

/// An asynchronous HTTP/1.1 client for one origin (Beast, with TLS), keeping connections alive between
/// requests. Thread-safe: requests from any thread may run at once, each on its own connection.
class Client {
  public:
    /// Throws std::invalid_argument for a URL that is not http(s)://host[:port][/path], or a CA file that
    /// cannot be loaded.
    Client(boost::asio::any_io_executor executor, ClientSettings settings);
    ~Client();
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    /// Sends the request and reads the whole response, within the settings' timeout or by `deadline` if that
    /// is sooner. Any HTTP status is a Response; no response at all is a TransportError. A kept-alive
    /// connection the server had closed meanwhile is replaced once, transparently.
    boost::asio::awaitable<Response> send(const Request& request,
                                          std::optional<std::chrono::steady_clock::time_point> deadline = {});

    [[nodiscard]] const ClientSettings& settings() const noexcept;

  private:
    class Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace conveyor::http
