#include "conveyor/core/http_client.hpp"

#include <fmt/format.h>
#include <openssl/ssl.h>
#include <strings.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/url/parse.hpp>
#include <mutex>

namespace conveyor::http {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

std::optional<std::string_view> Response::header(std::string_view name) const {
    for (const auto& [key, value] : headers) {
        if (key.size() == name.size() && ::strncasecmp(key.data(), name.data(), key.size()) == 0) {
            return value;
        }
    }
    return std::nullopt;
}

namespace {

struct Origin {
    bool tls = false;
    std::string host;
    std::string port;
    std::string path_prefix;
};

Origin parse_origin(std::string_view url) {
    const auto parsed = boost::urls::parse_absolute_uri(url);
    if (!parsed) {
        throw std::invalid_argument(fmt::format("invalid URL '{}': {}", url, parsed.error().message()));
    }
    Origin origin;
    const auto scheme = parsed->scheme();
    if (scheme != "http" && scheme != "https") {
        throw std::invalid_argument(fmt::format("invalid URL '{}': the scheme must be http or https", url));
    }
    origin.tls = scheme == "https";
    origin.host = std::string(parsed->encoded_host());
    if (origin.host.empty()) {
        throw std::invalid_argument(fmt::format("invalid URL '{}': no host", url));
    }
    if (!origin.host.empty() && origin.host.front() == '[') {
        origin.host = origin.host.substr(1, origin.host.size() - 2);
    }
    origin.port = parsed->has_port() ? std::string(parsed->port()) : std::string(origin.tls ? "443" : "80");
    if (parsed->has_userinfo() || parsed->has_query() || parsed->has_fragment()) {
        throw std::invalid_argument(
            fmt::format("invalid URL '{}': credentials, a query or a fragment do not belong in a base URL", url));
    }
    origin.path_prefix = std::string(parsed->encoded_path());
    while (!origin.path_prefix.empty() && origin.path_prefix.back() == '/') {
        origin.path_prefix.pop_back();
    }
    return origin;
}

/// One kept-alive connection: a plain TCP stream, or TLS over one.
struct Connection {
    std::optional<beast::tcp_stream> plain;
    std::optional<beast::ssl_stream<beast::tcp_stream>> secure;
    beast::flat_buffer buffer;

    beast::tcp_stream& tcp() { return secure ? beast::get_lowest_layer(*secure) : *plain; }
};

/// What one request/response exchange on a connection came to.
struct Exchange {
    error_code error;
    bool response_started = false;
    bool keep_alive = false;
    Response response;
};

bool stale_connection(const error_code& error) {
    return error == bhttp::error::end_of_stream || error == asio::error::connection_reset ||
           error == asio::error::broken_pipe || error == asio::error::eof || error == ssl::error::stream_truncated;
}

template <typename Stream>
asio::awaitable<Exchange> exchange_on(Stream& stream, beast::flat_buffer& buffer,
                                      bhttp::request<bhttp::string_body>& request, std::size_t body_limit) {
    Exchange result;
    auto [write_error, written] = co_await bhttp::async_write(stream, request, asio::as_tuple(asio::use_awaitable));
    (void)written;
    if (write_error) {
        result.error = write_error;
        co_return result;
    }
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(body_limit);
    auto [read_error, read] = co_await bhttp::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
    result.response_started = read > 0 || parser.got_some();
    if (read_error) {
        result.error = read_error;
        co_return result;
    }
    auto message = parser.release();
    result.keep_alive = message.keep_alive();
    result.response.status = message.result_int();
    for (const auto& field : message) {
        result.response.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    result.response.body = std::move(message.body());
    co_return result;
}

}  // namespace

class Client::Impl : public std::enable_shared_from_this<Impl> {
  public:
    Impl(asio::any_io_executor executor, ClientSettings settings)
        : executor_(std::move(executor)),
          settings_(std::move(settings)),
          origin_(parse_origin(settings_.base_url)),
          tls_(ssl::context::tls_client) {
        if (origin_.tls) {
            tls_.set_verify_mode(ssl::verify_peer);
            error_code error;
            if (settings_.ca_file.empty()) {
                tls_.set_default_verify_paths(error);
            } else {
                tls_.load_verify_file(settings_.ca_file, error);
            }
            if (error) {
                throw std::invalid_argument(
                    fmt::format("cannot load CA certificates '{}': {}", settings_.ca_file, error.message()));
            }
        }
    }

    asio::awaitable<Response> send(const Request& request,
                                   std::optional<std::chrono::steady_clock::time_point> deadline) {
        auto expiry = std::chrono::steady_clock::now() + settings_.timeout;
        if (deadline) {
            expiry = std::min(expiry, *deadline);
        }
        auto message = build(request);
        // A kept-alive connection may have been closed by the server while idle; that shows as a broken
        // exchange with no response byte, and the request goes once more on a new connection. Callers send
        // requests that are safe to repeat (the gateway's carry an idempotency key).
        for (int round = 0;; ++round) {
            // The second round always opens a new connection: the other idle ones are likely as stale.
            auto connection = round == 0 ? take_idle() : nullptr;
            const bool reused = connection != nullptr;
            if (!connection) {
                connection = co_await connect(expiry);
            }
            connection->tcp().expires_at(expiry);
            Exchange result;
            if (connection->secure) {
                result = co_await exchange_on(*connection->secure, connection->buffer, message,
                                              settings_.max_response_bytes);
            } else {
                result =
                    co_await exchange_on(*connection->plain, connection->buffer, message, settings_.max_response_bytes);
            }
            if (!result.error) {
                if (result.keep_alive) {
                    give_back(std::move(connection));
                }
                co_return std::move(result.response);
            }
            if (reused && !result.response_started && stale_connection(result.error)) {
                drop_idle();
                continue;
            }
            if (result.error == beast::error::timeout) {
                throw TransportError(
                    TransportError::Kind::timeout, true,
                    fmt::format("{} {}: no response within the deadline", request.method, describe(request)));
            }
            throw TransportError(TransportError::Kind::broken, true,
                                 fmt::format("{} {}: connection broken before the response: {}", request.method,
                                             describe(request), result.error.message()));
        }
    }

    const ClientSettings& settings() const noexcept { return settings_; }

  private:
    std::string describe(const Request& request) const {
        return fmt::format("{}://{}:{}{}{}", origin_.tls ? "https" : "http", origin_.host, origin_.port,
                           origin_.path_prefix, request.path);
    }

    bhttp::request<bhttp::string_body> build(const Request& request) const {
        const auto verb = bhttp::string_to_verb(request.method);
        if (verb == bhttp::verb::unknown) {
            throw std::invalid_argument(fmt::format("unknown HTTP method '{}'", request.method));
        }
        bhttp::request<bhttp::string_body> message{verb, origin_.path_prefix + request.path, 11};
        const bool default_port = origin_.port == (origin_.tls ? "443" : "80");
        message.set(bhttp::field::host, default_port ? origin_.host : origin_.host + ":" + origin_.port);
        message.set(bhttp::field::user_agent, settings_.user_agent);
        message.set(bhttp::field::accept, "application/json");
        if (!request.body.empty() || verb == bhttp::verb::post || verb == bhttp::verb::put) {
            message.set(bhttp::field::content_type, request.content_type);
        }
        for (const auto& [name, value] : request.headers) {
            message.set(name, value);
        }
        message.body() = request.body;
        message.keep_alive(true);
        message.prepare_payload();
        return message;
    }

    std::unique_ptr<Connection> take_idle() {
        const std::lock_guard lock(mutex_);
        if (idle_.empty()) {
            return nullptr;
        }
        auto connection = std::move(idle_.back());
        idle_.pop_back();
        return connection;
    }

    /// After one kept-alive connection turned out closed (a server restart, its idle timeout), the others are
    /// no better.
    void drop_idle() {
        const std::lock_guard lock(mutex_);
        idle_.clear();
    }

    void give_back(std::unique_ptr<Connection> connection) {
        const std::lock_guard lock(mutex_);
        if (idle_.size() < settings_.max_idle_connections) {
            idle_.push_back(std::move(connection));
        }
    }

    asio::awaitable<std::unique_ptr<Connection>> connect(std::chrono::steady_clock::time_point expiry) {
        auto connection = std::make_unique<Connection>();
        if (origin_.tls) {
            connection->secure.emplace(executor_, tls_);
        } else {
            connection->plain.emplace(executor_);
        }
        auto& tcp_stream = connection->tcp();
        tcp_stream.expires_at(expiry);
        tcp::resolver resolver(executor_);
        auto [resolve_error, endpoints] =
            co_await resolver.async_resolve(origin_.host, origin_.port, asio::as_tuple(asio::use_awaitable));
        if (resolve_error) {
            throw TransportError(TransportError::Kind::refused, false,
                                 fmt::format("cannot resolve {}: {}", origin_.host, resolve_error.message()));
        }
        auto [connect_error, endpoint] =
            co_await tcp_stream.async_connect(endpoints, asio::as_tuple(asio::use_awaitable));
        (void)endpoint;
        if (connect_error == beast::error::timeout) {
            throw TransportError(TransportError::Kind::timeout, false,
                                 fmt::format("cannot connect to {}:{}: timed out", origin_.host, origin_.port));
        }
        if (connect_error) {
            throw TransportError(
                TransportError::Kind::refused, false,
                fmt::format("cannot connect to {}:{}: {}", origin_.host, origin_.port, connect_error.message()));
        }
        tcp_stream.socket().set_option(tcp::no_delay(true));
        if (connection->secure) {
            auto& secure = *connection->secure;
            // SNI, and the certificate must name the host we asked for.
            if (::SSL_set_tlsext_host_name(secure.native_handle(), origin_.host.c_str()) != 1) {
                throw TransportError(TransportError::Kind::tls, false, "cannot set the TLS server name");
            }
            secure.set_verify_callback(ssl::host_name_verification(origin_.host));
            auto [handshake_error] =
                co_await secure.async_handshake(ssl::stream_base::client, asio::as_tuple(asio::use_awaitable));
            if (handshake_error) {
                throw TransportError(handshake_error == beast::error::timeout ? TransportError::Kind::timeout
                                                                              : TransportError::Kind::tls,
                                     false,
                                     fmt::format("TLS handshake with {}:{} failed: {}", origin_.host, origin_.port,
                                                 handshake_error.message()));
            }
        }
        co_return connection;
    }

    asio::any_io_executor executor_;
    ClientSettings settings_;
    Origin origin_;
    ssl::context tls_;
    std::mutex mutex_;
    std::vector<std::unique_ptr<Connection>> idle_;
};

Client::Client(asio::any_io_executor executor, ClientSettings settings)
    : impl_(std::make_shared<Impl>(std::move(executor), std::move(settings))) {}

Client::~Client() = default;

asio::awaitable<Response> Client::send(const Request& request,
                                       std::optional<std::chrono::steady_clock::time_point> deadline) {
    auto impl = impl_;  // the client may be destroyed while the request is pending
    auto response = co_await impl->send(request, deadline);
    co_return response;
}

const ClientSettings& Client::settings() const noexcept {
    return impl_->settings();
}

}  // namespace conveyor::http
