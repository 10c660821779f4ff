#include "conveyor/core/http_server.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/parse_query.hpp>
#include <map>
#include <stdexcept>

#include "conveyor/core/logging.hpp"

namespace conveyor {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace urls = boost::urls;
using tcp = asio::ip::tcp;

namespace {
constexpr auto kIdleTimeout = std::chrono::seconds(30);
// How long the rest of a refused upload is read and dropped before the connection closes (see drain()).
constexpr auto kDrainTimeout = std::chrono::seconds(5);
constexpr std::string_view kText = "text/plain; charset=utf-8";

using Message = http::request<http::string_body>;

HttpResponse json_error(unsigned status, std::string_view message) {
    return HttpResponse{status, "application/json", fmt::format(R"({{"error":"{}"}})", message)};
}

std::optional<std::string_view> find_value(const std::vector<std::pair<std::string, std::string>>& pairs,
                                           std::string_view name, bool ignore_case) {
    const auto found = std::find_if(pairs.begin(), pairs.end(), [&](const auto& pair) {
        return ignore_case ? beast::iequals(pair.first, name) : pair.first == name;
    });
    if (found == pairs.end()) {
        return std::nullopt;
    }
    return std::string_view(found->second);
}

bool expects_continue(const Message& message) {
    return message.version() >= 11 && beast::iequals(message[http::field::expect], "100-continue");
}

std::string remote_address(const beast::tcp_stream& stream) {
    boost::system::error_code error;
    const auto endpoint = stream.socket().remote_endpoint(error);
    return error ? std::string() : endpoint.address().to_string();
}

/// A route() pattern, segment by segment: a literal segment has an empty name, a {name} one an empty literal.
struct Pattern {
    std::vector<std::string> literals;
    std::vector<std::string> names;

    static Pattern parse(std::string_view pattern) {
        if (!pattern.starts_with('/')) {
            throw std::invalid_argument(fmt::format("HTTP route pattern '{}' does not start with '/'", pattern));
        }
        Pattern parsed;
        // Boost.URL sees no segments in "/", and an empty last one after a trailing '/'; so does this.
        if (pattern == "/") {
            return parsed;
        }
        std::string_view rest = pattern.substr(1);
        while (true) {
            const auto slash = rest.find('/');
            const auto segment = rest.substr(0, slash);
            if (segment.size() >= 2 && segment.starts_with('{') && segment.ends_with('}')) {
                parsed.literals.emplace_back();
                parsed.names.emplace_back(segment.substr(1, segment.size() - 2));
            } else {
                parsed.literals.emplace_back(segment);
                parsed.names.emplace_back();
            }
            if (slash == std::string_view::npos) {
                return parsed;
            }
            rest.remove_prefix(slash + 1);
        }
    }

    [[nodiscard]] bool matches(const std::vector<std::string>& segments) const {
        if (segments.size() != literals.size()) {
            return false;
        }
        for (std::size_t i = 0; i < segments.size(); ++i) {
            if (names[i].empty() ? segments[i] != literals[i] : segments[i].empty()) {
                return false;
            }
        }
        return true;
    }

    /// Where two patterns match the same path, the one with a literal segment first where they differ wins.
    [[nodiscard]] bool more_specific_than(const Pattern& other) const {
        for (std::size_t i = 0; i < names.size(); ++i) {
            if (names[i].empty() != other.names[i].empty()) {
                return names[i].empty();
            }
        }
        return false;
    }

    /// Whether both match exactly the same paths.
    [[nodiscard]] bool same_shape(const Pattern& other) const {
        if (literals.size() != other.literals.size()) {
            return false;
        }
        for (std::size_t i = 0; i < literals.size(); ++i) {
            if (names[i].empty() != other.names[i].empty() || literals[i] != other.literals[i]) {
                return false;
            }
        }
        return true;
    }
};

struct ApiRoute {
    std::string method;
    Pattern pattern;
    HttpServer::AsyncRoute handler;
};
}  // namespace

std::optional<std::string_view> HttpRequest::header(std::string_view name) const {
    return find_value(headers, name, true);
}

std::optional<std::string_view> HttpRequest::param(std::string_view name) const {
    return find_value(params, name, false);
}

std::optional<std::string> HttpRequest::query_param(std::string_view name) const {
    const auto encoded = urls::parse_query(query);
    if (!encoded) {
        return std::nullopt;
    }
    urls::encoding_opts options;
    options.space_as_plus = true;
    for (const auto& parameter : *encoded) {
        if (parameter.key.decode(options) == name) {
            return parameter.value.decode(options);
        }
    }
    return std::nullopt;
}

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

    void add_route(std::string method, std::string_view pattern, AsyncRoute handler) {
        if (!handler) {
            throw std::invalid_argument(fmt::format("HTTP route {} {} has no handler", method, pattern));
        }
        auto parsed = Pattern::parse(pattern);
        for (const auto& route : api_routes_) {
            if (route.method == method && route.pattern.same_shape(parsed)) {
                throw std::invalid_argument(fmt::format("HTTP route {} {} is already registered", method, pattern));
            }
        }
        api_routes_.push_back(ApiRoute{std::move(method), std::move(parsed), std::move(handler)});
    }

    std::map<std::string, Route, std::less<>> routes_;
    std::vector<ApiRoute> api_routes_;
    std::size_t body_limit_ = kDefaultBodyLimit;
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
        const std::string remote = remote_address(stream);
        beast::flat_buffer buffer;
        while (true) {
            http::request_parser<http::string_body> parser;
            parser.body_limit(self->body_limit_);
            stream.expires_after(kIdleTimeout);
            auto [header_error, header_bytes] =
                co_await http::async_read_header(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
            // Beast refuses a Content-Length over the limit as soon as it has the header.
            if (header_error == http::error::body_limit) {
                co_await self->refuse_oversize(stream);
                co_return;
            }
            if (header_error) {
                break;  // closed, timed out or malformed: nothing to answer
            }
            if (!parser.is_done()) {
                // Clients such as curl hold a large body back until told to go on (or until they tire of waiting).
                if (expects_continue(parser.get())) {
                    http::response<http::empty_body> proceed{http::status::continue_, parser.get().version()};
                    auto [continue_error, continue_bytes] =
                        co_await http::async_write(stream, proceed, asio::as_tuple(asio::use_awaitable));
                    if (continue_error) {
                        break;
                    }
                }
                auto [body_error, body_bytes] =
                    co_await http::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
                if (body_error == http::error::body_limit) {
                    co_await self->refuse_oversize(stream);
                    co_return;
                }
                if (body_error) {
                    break;
                }
            }
            auto& request = parser.get();
            const bool head = request.method() == http::verb::head;
            const bool keep_alive = request.keep_alive();
            const unsigned version = request.version();
            auto result = co_await self->respond(request, remote);
            auto response = to_message(std::move(result), version, head);
            response.keep_alive(keep_alive);
            response.prepare_payload();
            // An API handler may have awaited past the read's deadline.
            stream.expires_after(kIdleTimeout);
            auto [write_error, written] =
                co_await http::async_write(stream, response, asio::as_tuple(asio::use_awaitable));
            if (write_error || !response.keep_alive()) {
                break;
            }
        }
        boost::system::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    }

    asio::awaitable<HttpResponse> respond(Message& request, const std::string& remote) const {
        std::string_view target = request.target();
        target = target.substr(0, target.find('?'));
        HttpResponse result;
        if (const auto route = routes_.find(target); route != routes_.end()) {
            result = answer_get(request, target, route->second);
        } else if (api_routes_.empty()) {
            result = {404, std::string(kText), "not found\n"};
        } else {
            result = co_await dispatch(request, remote);
        }
        co_return result;
    }

    static HttpResponse answer_get(const Message& request, std::string_view target, const Route& route) {
        if (request.method() != http::verb::get && request.method() != http::verb::head) {
            return {405, std::string(kText), "method not allowed\n", {{"Allow", "GET, HEAD"}}};
        }
        try {
            return route();
        } catch (const std::exception& e) {
            spdlog::error("http: {} failed: {}", target, e.what());
            return {500, std::string(kText), "internal error\n"};
        }
    }

    asio::awaitable<HttpResponse> dispatch(Message& message, const std::string& remote) const {
        HttpResponse result;
        const auto target = urls::parse_origin_form(message.target());
        if (!target) {
            result = json_error(400, "malformed request target");
            co_return result;
        }
        std::vector<std::string> segments;
        for (const auto& segment : target->segments()) {
            segments.push_back(segment);
        }
        const std::string_view method = message.method_string();
        const ApiRoute* chosen = nullptr;
        std::vector<std::string_view> allowed;
        for (const auto& route : api_routes_) {
            if (!route.pattern.matches(segments)) {
                continue;
            }
            if (route.method == method) {
                if (chosen == nullptr || route.pattern.more_specific_than(chosen->pattern)) {
                    chosen = &route;
                }
            } else if (std::find(allowed.begin(), allowed.end(), route.method) == allowed.end()) {
                allowed.push_back(route.method);
            }
        }
        if (chosen == nullptr) {
            if (allowed.empty()) {
                result = json_error(404, "not found");
            } else {
                result = json_error(405, "method not allowed");
                result.headers.emplace_back("Allow", fmt::format("{}", fmt::join(allowed, ", ")));
            }
            co_return result;
        }

        HttpRequest request;
        request.method = method;
        request.path = target->encoded_path();
        request.query = target->encoded_query();
        for (const auto& field : message) {
            request.headers.emplace_back(field.name_string(), field.value());
        }
        request.body = std::move(message.body());
        for (std::size_t i = 0; i < segments.size(); ++i) {
            if (!chosen->pattern.names[i].empty()) {
                request.params.emplace_back(chosen->pattern.names[i], std::move(segments[i]));
            }
        }
        request.remote_address = remote;
        try {
            auto pending = chosen->handler(request);
            result = co_await std::move(pending);
        } catch (const std::exception& e) {
            spdlog::error("http: {} {} failed: {}", request.method, request.path, e.what());
            result = json_error(500, "internal error");
        } catch (...) {
            spdlog::error("http: {} {} failed with a non-standard exception", request.method, request.path);
            result = json_error(500, "internal error");
        }
        co_return result;
    }

    static http::response<http::string_body> to_message(HttpResponse result, unsigned version, bool head) {
        http::response<http::string_body> response;
        response.version(version);
        response.set(http::field::server, "conveyor");
        response.result(result.status);
        response.set(http::field::content_type, result.content_type);
        for (auto& [name, value] : result.headers) {
            response.insert(name, value);
        }
        if (!head) {
            response.body() = std::move(result.body);
        }
        return response;
    }

    /// Answers 413 to a request whose body is over the limit; the connection closes after it.
    asio::awaitable<void> refuse_oversize(beast::tcp_stream& stream) const {
        const auto message = fmt::format("request body larger than {} bytes", body_limit_);
        HttpResponse refusal = json_error(413, message);
        if (api_routes_.empty()) {
            refusal = {413, std::string(kText), message + "\n"};
        }
        auto response = to_message(std::move(refusal), 11, false);
        response.keep_alive(false);
        response.prepare_payload();
        stream.expires_after(kIdleTimeout);
        auto [write_error, written] = co_await http::async_write(stream, response, asio::as_tuple(asio::use_awaitable));
        if (!write_error) {
            co_await drain(stream);
        }
    }

    /// Closing a socket with unread input makes the kernel reset the connection, and the reset can destroy the
    /// answer before the client has read it; so the rest of the upload is read and dropped for a while first.
    static asio::awaitable<void> drain(beast::tcp_stream& stream) {
        boost::system::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
        stream.expires_after(kDrainTimeout);
        std::array<char, 16 * 1024> scratch{};
        while (true) {
            auto [error, bytes] =
                co_await stream.async_read_some(asio::buffer(scratch), asio::as_tuple(asio::use_awaitable));
            if (error) {
                break;
            }
        }
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

void HttpServer::route(std::string method, std::string pattern, AsyncRoute handler) {
    impl_->add_route(std::move(method), pattern, std::move(handler));
}

void HttpServer::set_body_limit(std::size_t bytes) {
    impl_->body_limit_ = bytes;
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
