#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

namespace conveyor {

struct HttpResponse {
    unsigned status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
};

/// Serves GET routes (health, readiness, metrics) over HTTP/1.1 with keep-alive. Route handlers run on the
/// server's executor and must not block.
class HttpServer {
  public:
    using Route = std::function<HttpResponse()>;

    HttpServer(boost::asio::any_io_executor executor, std::string address, std::uint16_t port);
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    /// Registers a GET route; call before start().
    void get(std::string path, Route route);

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
