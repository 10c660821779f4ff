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

namespace conveyor {

struct HttpResponse {
    unsigned status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    /// Sent in addition to Content-Type, e.g. Retry-After, Location or WWW-Authenticate. The initializer lets
    /// HttpResponse{status, content_type, body} leave it out without a missing-initializer warning.
    std::vector<std::pair<std::string, std::string>> headers{};
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
    /// The peer's IP address, e.g. "127.0.0.1" or "::1".
    std::string remote_address;

    /// The first header of that name (case-insensitive), if any.
    [[nodiscard]] std::optional<std::string_view> header(std::string_view name) const;
    /// The value of the pattern segment {name}, if the pattern has one.
    [[nodiscard]] std::optional<std::string_view> param(std::string_view name) const;
    /// The first query parameter of that name, percent-decoded with '+' read as a space; empty for a bare
    /// "?name". Nothing if absent or if the query string is malformed.
    [[nodiscard]] std::optional<std::string> query_param(std::string_view name) const;
};

/// Serves HTTP/1.1 with keep-alive: synchronous GET routes (health, readiness, metrics) and coroutine routes for
/// a JSON API. Handlers run on the server's executor and must not block.
///
/// A path registered with get() answers only GET and HEAD, with plain-text errors. Once any route() is
/// registered, the server's own error answers (unknown path, wrong method, oversize body, malformed target)
/// are JSON objects {"error": "..."}.
class HttpServer {
  public:
    using Route = std::function<HttpResponse()>;
    using AsyncRoute = std::function<boost::asio::awaitable<HttpResponse>(const HttpRequest&)>;

    static constexpr std::size_t kDefaultBodyLimit = std::size_t{1024} * 1024;

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
    void route(std::string method, std::string pattern, AsyncRoute handler);

    /// The largest request body accepted (default kDefaultBodyLimit); a larger one gets 413 and the connection
    /// is closed. Call before start().
    void set_body_limit(std::size_t bytes);

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
