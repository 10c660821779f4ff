#include "conveyor/core/http_server.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

#include "conveyor/core/logging.hpp"

namespace conveyor {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {
constexpr auto kIdleTimeout = std::chrono::seconds(30);
// Health and metrics requests have no body; a small limit keeps a stray client from making us buffer much.
constexpr std::size_t kRequestBodyLimit = 8 * 1024;
}  // namespace

class HttpServer::Impl : public std::enable_shared_from_this<Impl> {
  public:
    Impl(asio::any_io_executor executor, std::string address, std::uint16_t port)
        : executor_(std::move(executor)),
          acceptor_(asio::make_strand(executor_)),
          address_(std::move(address)),
          requested_port_(port) {}

    void start() {
        const tcp::endpoint endpoint(asio::ip::make_address(address_), requested_port_);
        boost::system::error_code error;
        acceptor_.open(endpoint.protocol(), error);
        if (!error) {
            acceptor_.set_option(asio::socket_base::reuse_address(true), error);
        }
        if (!error) {
            acceptor_.bind(endpoint, error);
        }
        if (!error) {
            acceptor_.listen(asio::socket_base::max_listen_connections, error);
        }
        if (error) {
            throw std::system_error(error,
                                    fmt::format("HTTP server cannot listen on {}:{}", address_, requested_port_));
        }
        port_ = acceptor_.local_endpoint().port();
        spdlog::info("http: listening on {}:{}", address_, port_);
        asio::co_spawn(acceptor_.get_executor(), accept_loop(shared_from_this()), log_failure("http accept loop"));
    }

    void stop() {
        asio::post(acceptor_.get_executor(), [self = shared_from_this()] {
            boost::system::error_code ignored;
            self->acceptor_.close(ignored);
        });
    }

    std::map<std::string, Route, std::less<>> routes_;
    std::uint16_t port_ = 0;

  private:
    static asio::awaitable<void> accept_loop(std::shared_ptr<Impl> self) {
        while (self->acceptor_.is_open()) {
            auto [error, socket] = co_await self->acceptor_.async_accept(asio::make_strand(self->executor_),
                                                                         asio::as_tuple(asio::use_awaitable));
            if (error == asio::error::operation_aborted || !self->acceptor_.is_open()) {
                co_return;
            }
            if (error) {
                spdlog::warn("http: accept failed: {}", error.message());
                continue;
            }
            auto executor = socket.get_executor();
            asio::co_spawn(executor, serve(self, beast::tcp_stream(std::move(socket))), log_failure("http session"));
        }
    }

    static asio::awaitable<void> serve(std::shared_ptr<Impl> self, beast::tcp_stream stream) {
        beast::flat_buffer buffer;
        while (true) {
            http::request_parser<http::string_body> parser;
            parser.body_limit(kRequestBodyLimit);
            stream.expires_after(kIdleTimeout);
            auto [read_error, bytes] =
                co_await http::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
            if (read_error) {
                break;  // closed, timed out or malformed: nothing to answer
            }
            const auto& request = parser.get();
            auto response = self->respond(request);
            response.keep_alive(request.keep_alive());
            response.prepare_payload();
            auto [write_error, written] =
                co_await http::async_write(stream, response, asio::as_tuple(asio::use_awaitable));
            if (write_error || !response.keep_alive()) {
                break;
            }
        }
        boost::system::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    }

    http::response<http::string_body> respond(const http::request<http::string_body>& request) const {
        http::response<http::string_body> response;
        response.version(request.version());
        response.set(http::field::server, "conveyor");
        std::string_view target = request.target();
        target = target.substr(0, target.find('?'));
        const auto route = routes_.find(target);
        HttpResponse result;
        if (route == routes_.end()) {
            result = {404, "text/plain; charset=utf-8", "not found\n"};
        } else if (request.method() != http::verb::get && request.method() != http::verb::head) {
            result = {405, "text/plain; charset=utf-8", "method not allowed\n"};
            response.set(http::field::allow, "GET, HEAD");
        } else {
            try {
                result = route->second();
            } catch (const std::exception& e) {
                spdlog::error("http: {} failed: {}", target, e.what());
                result = {500, "text/plain; charset=utf-8", "internal error\n"};
            }
        }
        response.result(result.status);
        response.set(http::field::content_type, result.content_type);
        if (request.method() != http::verb::head) {
            response.body() = std::move(result.body);
        }
        return response;
    }

    asio::any_io_executor executor_;
    tcp::acceptor acceptor_;
    std::string address_;
    std::uint16_t requested_port_;
};

HttpServer::HttpServer(asio::any_io_executor executor, std::string address, std::uint16_t port)
    : impl_(std::make_shared<Impl>(std::move(executor), std::move(address), port)) {}

HttpServer::~HttpServer() {
    impl_->stop();
}

void HttpServer::get(std::string path, Route route) {
    impl_->routes_.emplace(std::move(path), std::move(route));
}

void HttpServer::start() {
    impl_->start();
}

void HttpServer::stop() {
    impl_->stop();
}

std::uint16_t HttpServer::port() const noexcept {
    return impl_->port_;
}

}  // namespace conveyor
