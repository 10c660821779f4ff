#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "conveyor/core/ip_networks.hpp"

namespace prometheus {
class Registry;
}

namespace conveyor {

struct HttpResponse {
    unsigned status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    /// Sent in addition to Content-Type, e.g. Retry-After, Location or WWW-Authenticate. The initializer lets
    /// HttpResponse{status, content_type, body} leave it out without a missing-initializer warning.
    std::vector<std::pair<std::string, std::string>> headers{};
    /// Close the connection after this answer (e.g. to make a client that floods open a new one per request).
    bool close_connection = false;
};

/// A request to a route registered with HttpServer::route().
struct HttpRequest {
    std::string method;
    /// The request target up to the query, as received (still percent-encoded).
    std::string path;
    /// The raw query string, without the '?'.
    std::string query;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    /// The values of the route pattern's {name} segments, percent-decoded.
    std::vector<std::pair<std::string, std::string>> params;
    /// The client's IP address, e.g. "127.0.0.1" or "::1": the peer's, or the one X-Forwarded-For names when the
    /// peer is a trusted proxy (HttpLimits::trusted_proxies).
    std::string remote_address;

    /// The first header of that name (case-insensitive), if any.
    [[nodiscard]] std::optional<std::string_view> header(std::string_view name) const;
    /// The value of the pattern segment {name}, if the pattern has one.
    [[nodiscard]] std::optional<std::string_view> param(std::string_view name) const;
    /// The first query parameter of that name, percent-decoded with '+' read as a space; empty for a bare
    /// "?name". Nothing if absent or if the query string is malformed.
    [[nodiscard]] std::optional<std::string> query_param(std::string_view name) const;
};

/// What one server admits. A request refused by one of these limits is answered (never silently dropped) and
/// counted in conveyor_http_refused_total{reason}; the reasons are in brackets.
struct HttpLimits {
    /// Connections served at once; one more is answered 503 with Retry-After and closed [connection_limit]. A cap
    /// below the process's file-descriptor limit keeps descriptors for the broker and the database.
    std::size_t max_connections = 512;
    /// The request line and headers, in bytes; more gets 431 [header_too_large].
    std::size_t max_header_bytes = std::size_t{16} * 1024;
    /// The request body, in bytes; more gets 413 [body_too_large].
    std::size_t max_body_bytes = std::size_t{1024} * 1024;
    /// Requests per second each client address may make to route()s, checked before any handler (so before
    /// authentication), with a burst of two seconds' worth; over it, 429 with Retry-After and the connection is
    /// closed [client_rate_limit]. 0: no limit. get() routes (probes, metrics) are never limited.
    double client_rate = 0;
    /// Peers whose X-Forwarded-For header names the client (a load balancer, an ingress); from any other peer the
    /// header is ignored, so a client cannot choose its own address.
    IpNetworks trusted_proxies{};
};

/// Serves HTTP/1.1 with keep-alive: synchronous GET routes (health, readiness, metrics) and coroutine routes for
/// a JSON API. Handlers run on the server's executor and must not block.
///
/// A path registered with get() answers only GET and HEAD, with plain-text errors. Once any route() is
/// registered, the server's own error answers (unknown path, wrong method, oversize body, malformed target)
/// are JSON objects {"error": "..."}. A malformed request gets 400, an HTTP version other than 1.0 and 1.1 (an
/// HTTP/2 preface) 505, and the connection closes after either [malformed, unsupported_version]. When the process
/// runs out of file descriptors, the accept loop backs off (up to 1 s) instead of spinning, and logs it once per
/// 10 s [accept_failed].
class HttpServer {
  public:
    using Route = std::function<HttpResponse()>;
    using AsyncRoute = std::function<boost::asio::awaitable<HttpResponse>(const HttpRequest&)>;

    HttpServer(boost::asio::any_io_executor executor, std::string address, std::uint16_t port);
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    /// Registers a GET route for an exact path; call before start().
    void get(std::string path, Route route);

    /// Registers a coroutine route; call before start(). `pattern` is '/'-separated literal segments and {name}
    /// segments that match any one non-empty segment, e.g. "/v1/scheduled/{id}"; a literal segment is preferred
    /// over a {name} one where both match. A path that matches only other methods' patterns gets 405 with Allow;
    /// an exception escaping the handler gets 500. Throws std::invalid_argument for a pattern not starting with
    /// '/', an empty handler, or a method and pattern that an earlier route already matches the same way.
    void route(std::string method, const std::string& pattern, AsyncRoute handler);

    /// Serves HTTPS (TLS 1.2 and later) with this certificate chain and private key, PEM files; call before start().
    /// Throws std::invalid_argument naming the file and the reason if either cannot be used. A client whose
    /// handshake fails (plain HTTP, an untrusted certificate) is dropped and counted [tls_handshake].
    void use_tls(const std::string& certificate_chain_file, const std::string& private_key_file);

    /// Sets what the server admits; call before start().
    void set_limits(HttpLimits limits);

    /// Exports conveyor_http_connections (gauge) and conveyor_http_refused_total{reason} (counter) to `metrics`,
    /// which must outlive the server; call before start().
    void export_metrics(prometheus::Registry& metrics);

    /// Binds and starts accepting; throws std::system_error naming the address if the port cannot be bound.
    void start();
    /// Stops accepting; open connections end at their next request or idle timeout.
    void stop();

    /// The bound port (useful when constructed with port 0).
    [[nodiscard]] std::uint16_t port() const noexcept;

  private:
    class Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace conveyor
