#include "conveyor/core/http_server.hpp"

#include <fmt/format.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/parse_query.hpp>
#include <map>
#include <stdexcept>
#include <utility>

#include "conveyor/core/logging.hpp"
#include "conveyor/core/rate_limit.hpp"
#include "route_pattern.hpp"

namespace conveyor {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace urls = boost::urls;
using tcp = asio::ip::tcp;

namespace {
constexpr auto kIdleTimeout = std::chrono::seconds(30);
// How long the rest of a refused request is read and dropped before the connection closes (see drain()).
constexpr auto kDrainTimeout = std::chrono::seconds(5);
// A connection over the cap is answered within this, or dropped.
constexpr auto kRefusalTimeout = std::chrono::seconds(1);
// Connections over the cap answered at once; past this many, more are closed unanswered, so that a flood of them
// cannot take the descriptors the cap is there to keep.
constexpr std::size_t kMaxRefusing = 64;
constexpr auto kAcceptBackoffMin = std::chrono::milliseconds(10);
constexpr auto kAcceptBackoffMax = std::chrono::seconds(1);
constexpr std::string_view kText = "text/plain; charset=utf-8";
// How long a TLS client gets to complete its handshake, and to answer the close_notify at the end.
constexpr auto kTlsHandshakeTimeout = std::chrono::seconds(10);
constexpr auto kTlsShutdownTimeout = std::chrono::seconds(1);
constexpr std::array kRefusalReasons = {"connection_limit", "client_rate_limit",   "header_too_large",
                                        "body_too_large",   "unsupported_version", "malformed",
                                        "accept_failed",    "tls_handshake"};

using Message = http::request<http::string_body>;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

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

asio::ip::address peer_address(const beast::tcp_stream& stream) {
    boost::system::error_code error;
    const auto endpoint = stream.socket().remote_endpoint(error);
    return error ? asio::ip::address() : endpoint.address();
}

/// Every X-Forwarded-For header of the request, joined by commas (RFC 7230 allows the list to be split so).
std::optional<std::string> forwarded_for(const Message& message) {
    std::optional<std::string> joined;
    const auto [first, last] = message.equal_range("X-Forwarded-For");
    for (auto field = first; field != last; ++field) {
        joined = joined ? fmt::format("{},{}", *joined, field->value()) : std::string(field->value());
    }
    return joined;
}

/// Whether a read failed because the request was not HTTP Beast can read (rather than the peer going away, a
/// timeout, or an incomplete request at the end of the stream).
bool is_malformed(const boost::system::error_code& error) {
    return error.category() == http::make_error_code(http::error::bad_method).category() &&
           error != http::error::end_of_stream && error != http::error::partial_message &&
           error != http::error::need_more;
}

/// One place in a count (connections being served, refusals being answered), taken where admission is decided and
/// given back when the coroutine holding it ends: counting inside the coroutine instead would let a burst of accepts
/// overshoot the cap before the first of them starts.
class Slot {
  public:
    Slot(std::atomic<std::size_t>& count, prometheus::Gauge* gauge) : count_(&count), gauge_(gauge) {
        ++*count_;
        if (gauge_ != nullptr) {
            gauge_->Increment();
        }
    }
    Slot(Slot&& other) noexcept : count_(std::exchange(other.count_, nullptr)), gauge_(other.gauge_) {}
    ~Slot() {
        if (count_ != nullptr) {
            --*count_;
            if (gauge_ != nullptr) {
                gauge_->Decrement();
            }
        }
    }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    Slot& operator=(Slot&&) = delete;

  private:
    std::atomic<std::size_t>* count_;
    prometheus::Gauge* gauge_;
};

struct ApiRoute {
    std::string method;
    RoutePattern pattern;
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
        spdlog::info("http: listening on {}:{}{} (at most {} connections)", address_, port_, tls_ ? " with TLS" : "",
                     limits_.max_connections);
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
        auto parsed = RoutePattern::parse(pattern);
        for (const auto& route : api_routes_) {
            if (route.method == method && route.pattern.same_shape(parsed)) {
                throw std::invalid_argument(fmt::format("HTTP route {} {} is already registered", method, pattern));
            }
        }
        api_routes_.push_back(ApiRoute{std::move(method), std::move(parsed), std::move(handler)});
    }

    void export_metrics(prometheus::Registry& registry) {
        connections_gauge_ = &prometheus::BuildGauge()
                                  .Name("conveyor_http_connections")
                                  .Help("HTTP connections open now")
                                  .Register(registry)
                                  .Add({});
        auto& refused = prometheus::BuildCounter()
                            .Name("conveyor_http_refused_total")
                            .Help("HTTP connections and requests refused by a server limit, by reason")
                            .Register(registry);
        for (std::size_t i = 0; i < kRefusalReasons.size(); ++i) {
            refused_[i] = &refused.Add({{"reason", kRefusalReasons[i]}});
        }
    }

    void use_tls(const std::string& certificate_chain_file, const std::string& private_key_file) {
        asio::ssl::context context(asio::ssl::context::tls_server);
        context.set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                            asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                            asio::ssl::context::no_tlsv1_1 | asio::ssl::context::single_dh_use);
        boost::system::error_code error;
        context.use_certificate_chain_file(certificate_chain_file, error);
        if (error) {
            throw std::invalid_argument(
                fmt::format("TLS certificate {} cannot be used: {}", certificate_chain_file, error.message()));
        }
        context.use_private_key_file(private_key_file, asio::ssl::context::pem, error);
        if (error) {
            throw std::invalid_argument(fmt::format("TLS key {} cannot be used (or does not match the certificate): {}",
                                                    private_key_file, error.message()));
        }
        tls_.emplace(std::move(context));
    }

    std::map<std::string, Route, std::less<>> routes_;
    std::vector<ApiRoute> api_routes_;
    std::optional<asio::ssl::context> tls_;
    HttpLimits limits_;
    std::uint16_t port_ = 0;

  private:
    void count_refused(std::string_view reason) const {
        const auto found = std::find(kRefusalReasons.begin(), kRefusalReasons.end(), reason);
        auto* counter = refused_[static_cast<std::size_t>(found - kRefusalReasons.begin())];
        if (counter != nullptr) {
            counter->Increment();
        }
    }

    static asio::awaitable<void> accept_loop(std::shared_ptr<Impl> self) {
        asio::steady_timer pause(self->acceptor_.get_executor());
        std::chrono::milliseconds backoff = kAcceptBackoffMin;
        while (self->acceptor_.is_open()) {
            auto [error, socket] = co_await self->acceptor_.async_accept(asio::make_strand(self->executor_),
                                                                         asio::as_tuple(asio::use_awaitable));
            if (error == asio::error::operation_aborted || !self->acceptor_.is_open()) {
                co_return;
            }
            if (error) {
                // Out of file descriptors (EMFILE) the listen queue stays readable: accepting again at once would
                // spin on the same error. Waiting lets connections close and descriptors come back.
                self->count_refused("accept_failed");
                if (const auto held_back = self->accept_log_.admit()) {
                    spdlog::warn("http: accept failed: {}{}; retrying in {} ms", error.message(),
                                 LogThrottle::held_back_note(*held_back), backoff.count());
                }
                pause.expires_after(backoff);
                co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
                backoff = std::min<std::chrono::milliseconds>(backoff * 2, kAcceptBackoffMax);
                continue;
            }
            backoff = kAcceptBackoffMin;
            auto executor = socket.get_executor();
            if (self->connections_ >= self->limits_.max_connections) {
                self->count_refused("connection_limit");
                // Past kMaxRefusing answers in progress, the socket closes unanswered as it goes out of scope; so
                // does one to a TLS server, which has no plain text to answer it in.
                if (self->refusing_ < kMaxRefusing && !self->tls_) {
                    asio::co_spawn(
                        executor,
                        refuse_connection(self, beast::tcp_stream(std::move(socket)), Slot(self->refusing_, nullptr)),
                        log_failure("http refusal"));
                }
                continue;
            }
            Slot connection(self->connections_, self->connections_gauge_);
            if (self->tls_) {
                asio::co_spawn(executor, serve_tls(self, beast::tcp_stream(std::move(socket)), std::move(connection)),
                               log_failure("https session"));
            } else {
                asio::co_spawn(executor, serve(self, beast::tcp_stream(std::move(socket)), std::move(connection)),
                               log_failure("http session"));
            }
        }
    }

    /// Answers a connection over the cap with 503 at once, without reading its request.
    static asio::awaitable<void> refuse_connection(std::shared_ptr<Impl> self, beast::tcp_stream stream,
                                                   Slot /*refusing*/) {
        auto refusal = self->error_answer(503, "too many connections; try again shortly");
        refusal.headers.emplace_back("Retry-After", "1");
        co_await self->refuse(stream, std::move(refusal), kRefusalTimeout);
    }

    static asio::awaitable<void> serve(std::shared_ptr<Impl> self, beast::tcp_stream stream, Slot /*connection*/) {
        const auto peer = peer_address(stream);
        co_await self->serve_requests(stream, peer);
        boost::system::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    }

    /// The TLS handshake, the requests, and the close_notify, each bounded in time.
    static asio::awaitable<void> serve_tls(std::shared_ptr<Impl> self, beast::tcp_stream plain, Slot /*connection*/) {
        const auto peer = peer_address(plain);
        TlsStream stream(std::move(plain), *self->tls_);
        beast::get_lowest_layer(stream).expires_after(kTlsHandshakeTimeout);
        auto [handshake_error] =
            co_await stream.async_handshake(asio::ssl::stream_base::server, asio::as_tuple(asio::use_awaitable));
        if (handshake_error) {
            self->count_refused("tls_handshake");
            if (const auto held_back = self->refusal_log_.admit()) {
                spdlog::warn("http: TLS handshake with {} failed: {}{}", peer.to_string(), handshake_error.message(),
                             LogThrottle::held_back_note(*held_back));
            }
            co_return;
        }
        co_await self->serve_requests(stream, peer);
        beast::get_lowest_layer(stream).expires_after(kTlsShutdownTimeout);
        co_await stream.async_shutdown(asio::as_tuple(asio::use_awaitable));
    }

    template <typename Stream>
    asio::awaitable<void> serve_requests(Stream& stream, const asio::ip::address& peer) {
        auto self = shared_from_this();
        beast::flat_buffer buffer;
        while (true) {
            http::request_parser<http::string_body> parser;
            parser.header_limit(static_cast<std::uint32_t>(self->limits_.max_header_bytes));
            parser.body_limit(self->limits_.max_body_bytes);
            beast::get_lowest_layer(stream).expires_after(kIdleTimeout);
            auto [header_error, header_bytes] =
                co_await http::async_read_header(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
            if (header_error) {
                co_await self->refuse_unreadable(stream, header_error);
                break;
            }
            const auto version = parser.get().version();
            if (version != 10 && version != 11) {
                self->count_refused("unsupported_version");
                co_await self->refuse(stream, self->error_answer(505, "only HTTP/1.0 and HTTP/1.1 are served"));
                co_return;
            }
            if (!parser.is_done()) {
                // Clients such as curl hold a large body back until told to go on (or until they tire of waiting).
                if (expects_continue(parser.get())) {
                    http::response<http::empty_body> proceed{http::status::continue_, version};
                    auto [continue_error, continue_bytes] =
                        co_await http::async_write(stream, proceed, asio::as_tuple(asio::use_awaitable));
                    if (continue_error) {
                        break;
                    }
                }
                auto [body_error, body_bytes] =
                    co_await http::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
                if (body_error) {
                    co_await self->refuse_unreadable(stream, body_error);
                    break;
                }
            }
            if (!co_await self->answer(stream, parser.get(), peer)) {
                break;
            }
        }
    }

    /// Answers one request; whether the connection may serve another.
    template <typename Stream>
    asio::awaitable<bool> answer(Stream& stream, Message& request, const asio::ip::address& peer) const {
        const bool head = request.method() == http::verb::head;
        const bool keep_alive = request.keep_alive();
        const unsigned version = request.version();
        auto result = co_await respond(request, peer);
        const bool close = result.close_connection;
        auto response = to_message(std::move(result), version, head);
        response.keep_alive(keep_alive && !close);
        response.prepare_payload();
        // An API handler may have awaited past the read's deadline.
        beast::get_lowest_layer(stream).expires_after(kIdleTimeout);
        auto [write_error, written] = co_await http::async_write(stream, response, asio::as_tuple(asio::use_awaitable));
        co_return !write_error && response.keep_alive();
    }

    /// After a failed read: answers a request that could not be read as it should be (too large, malformed), and
    /// says nothing to a peer that went away or timed out.
    template <typename Stream>
    asio::awaitable<void> refuse_unreadable(Stream& stream, const boost::system::error_code& error) {
        if (error == http::error::body_limit) {
            count_refused("body_too_large");
            co_await refuse(
                stream, error_answer(413, fmt::format("request body larger than {} bytes", limits_.max_body_bytes)));
        } else if (error == http::error::header_limit) {
            count_refused("header_too_large");
            co_await refuse(stream, error_answer(431, fmt::format("request line and headers larger than {} bytes",
                                                                  limits_.max_header_bytes)));
        } else if (error == http::error::bad_version) {
            // "PRI * HTTP/2.0": a client that speaks HTTP/2 without asking for it.
            count_refused("unsupported_version");
            co_await refuse(stream, error_answer(505, "only HTTP/1.0 and HTTP/1.1 are served"));
        } else if (is_malformed(error)) {
            count_refused("malformed");
            co_await refuse(stream, error_answer(400, fmt::format("malformed HTTP request: {}", error.message())));
        }
    }

    asio::awaitable<HttpResponse> respond(Message& request, const asio::ip::address& peer) const {
        std::string_view target = request.target();
        target = target.substr(0, target.find('?'));
        HttpResponse result;
        if (const auto route = routes_.find(target); route != routes_.end()) {
            result = answer_get(request, target, route->second);
        } else if (api_routes_.empty()) {
            result = {404, std::string(kText), "not found\n"};
        } else {
            const auto client = limits_.trusted_proxies.client_of(peer, forwarded_for(request)).to_string();
            if (auto refusal = over_client_rate(client)) {
                result = std::move(*refusal);
            } else {
                result = co_await dispatch(request, client);
            }
        }
        co_return result;
    }

    /// 429 for a client address over HttpLimits::client_rate; the connection closes after it, so a flood pays for a
    /// new connection per refusal.
    std::optional<HttpResponse> over_client_rate(const std::string& client) const {
        if (limits_.client_rate <= 0) {
            return std::nullopt;
        }
        const auto wait = client_buckets_.try_acquire(client, limits_.client_rate, 2 * limits_.client_rate);
        if (!wait) {
            return std::nullopt;
        }
        count_refused("client_rate_limit");
        if (const auto held_back = refusal_log_.admit()) {
            spdlog::warn("http: refused requests from {}: over {} requests per second{}", client, limits_.client_rate,
                         LogThrottle::held_back_note(*held_back));
        }
        auto refusal = json_error(429, "too many requests from this address");
        refusal.headers.emplace_back("Retry-After", std::to_string((wait->count() + 999) / 1000));
        refusal.close_connection = true;
        return refusal;
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

    /// The server's own error answers: JSON once the server has API routes, plain text otherwise.
    [[nodiscard]] HttpResponse error_answer(unsigned status, std::string_view message) const {
        if (api_routes_.empty()) {
            return {status, std::string(kText), fmt::format("{}\n", message)};
        }
        return json_error(status, message);
    }

    /// Sends `refusal` and closes the connection: the request (or what is left of it) is not served.
    template <typename Stream>
    static asio::awaitable<void> refuse(Stream& stream, HttpResponse refusal,
                                        std::chrono::seconds drain_for = kDrainTimeout) {
        auto response = to_message(std::move(refusal), 11, false);
        response.keep_alive(false);
        response.prepare_payload();
        beast::get_lowest_layer(stream).expires_after(kIdleTimeout);
        // NOLINTNEXTLINE(bugprone-use-after-move): clang-tidy 14 takes the frame's end for a use of the moved parameter
        auto [write_error, written] = co_await http::async_write(stream, response, asio::as_tuple(asio::use_awaitable));
        if (!write_error) {
            co_await drain(stream, drain_for);
        }
    }

    /// Closing a socket with unread input makes the kernel reset the connection, and the reset can destroy the
    /// answer before the client has read it; so the rest of the request is read and dropped for a while first.
    template <typename Stream>
    static asio::awaitable<void> drain(Stream& stream, std::chrono::seconds drain_for) {
        auto& lowest = beast::get_lowest_layer(stream);
        boost::system::error_code ignored;
        lowest.socket().shutdown(tcp::socket::shutdown_send, ignored);
        lowest.expires_after(drain_for);
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
    std::atomic<std::size_t> connections_ = 0;
    std::atomic<std::size_t> refusing_ = 0;
    prometheus::Gauge* connections_gauge_ = nullptr;
    std::array<prometheus::Counter*, kRefusalReasons.size()> refused_{};
    mutable TokenBuckets client_buckets_;
    mutable LogThrottle refusal_log_;
    LogThrottle accept_log_;
};

HttpServer::HttpServer(asio::any_io_executor executor, std::string address, std::uint16_t port)
    : impl_(std::make_shared<Impl>(std::move(executor), std::move(address), port)) {}

HttpServer::~HttpServer() {
    impl_->stop();
}

void HttpServer::get(std::string path, Route route) {
    impl_->routes_.emplace(std::move(path), std::move(route));
}

void HttpServer::route(std::string method, const std::string& pattern, AsyncRoute handler) {
    impl_->add_route(std::move(method), pattern, std::move(handler));
}

void HttpServer::use_tls(const std::string& certificate_chain_file, const std::string& private_key_file) {
    impl_->use_tls(certificate_chain_file, private_key_file);
}

void HttpServer::set_limits(HttpLimits limits) {
    impl_->limits_ = std::move(limits);
}

void HttpServer::export_metrics(prometheus::Registry& metrics) {
    impl_->export_metrics(metrics);
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
