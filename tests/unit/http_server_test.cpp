#include "conveyor/core/http_server.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "conveyor/core/http_client.hpp"
#include "conveyor/core/metrics.hpp"

namespace conveyor {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;
using Response = bhttp::response<bhttp::string_body>;

// Bounds every client operation, so that a server that never answers fails the test instead of hanging it.
constexpr auto kClientTimeout = 10s;
constexpr std::size_t kBodyLimit = 64 * 1024;
// Beyond what loopback socket buffers hold: a server that closed without reading it would reset the connection
// while the client is still writing.
constexpr std::size_t kHugeBody = 16 * 1024 * 1024;

/// Runs a client coroutine to completion on the calling thread.
template <typename T>
T run(asio::io_context& io, asio::awaitable<T> work) {
    auto result = asio::co_spawn(io, std::move(work), asio::use_future);
    io.restart();
    io.run();
    return result.get();
}

std::string post_header(std::string_view target, std::string_view extra_headers) {
    return fmt::format("POST {} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{}\r\n", target,
                       extra_headers);
}

/// One client connection to the server under test, driven synchronously from the test thread.
class Connection {
  public:
    explicit Connection(std::uint16_t port) {
        stream_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    }

    void send(std::string_view bytes) { run(io_, send_async(bytes)); }

    Response read() { return run(io_, read_async()); }

    Response exchange(std::string_view method, std::string_view target, std::string_view body = {}) {
        auto verb = bhttp::string_to_verb(method);
        bhttp::request<bhttp::string_body> request{verb, target, 11};
        request.set(bhttp::field::host, "test");
        if (!body.empty()) {
            request.set(bhttp::field::content_type, "application/json");
            request.body() = body;
        }
        request.prepare_payload();
        run(io_, write_async(request));
        return read();
    }

    /// How the next read ends after everything the server sent has been read: eof once it has closed.
    boost::system::error_code read_end() { return run(io_, read_end_async()); }

  private:
    asio::awaitable<void> send_async(std::string_view bytes) {
        stream_.expires_after(kClientTimeout);
        co_await asio::async_write(stream_, asio::buffer(bytes), asio::use_awaitable);
    }

    asio::awaitable<void> write_async(bhttp::request<bhttp::string_body>& request) {
        stream_.expires_after(kClientTimeout);
        co_await bhttp::async_write(stream_, request, asio::use_awaitable);
    }

    asio::awaitable<Response> read_async() {
        stream_.expires_after(kClientTimeout);
        Response response;
        co_await bhttp::async_read(stream_, buffer_, response, asio::use_awaitable);
        co_return response;
    }

    asio::awaitable<boost::system::error_code> read_end_async() {
        if (buffer_.size() != 0) {
            throw std::logic_error("unread response bytes");
        }
        stream_.expires_after(kClientTimeout);
        std::array<char, 1024> scratch{};
        auto [error, bytes] =
            co_await stream_.async_read_some(asio::buffer(scratch), asio::as_tuple(asio::use_awaitable));
        co_return error;
    }

    asio::io_context io_;
    beast::tcp_stream stream_{io_};
    beast::flat_buffer buffer_;
};

class HttpServerTest : public ::testing::Test {
  protected:
    void TearDown() override {
        if (thread_.joinable()) {
            server_.stop();
            work_.reset();
            io_.stop();
            thread_.join();
        }
    }

    void start() {
        server_.start();
        thread_ = std::thread([this] { io_.run(); });
    }

    /// A handler that keeps a copy of the request and answers `reply`.
    HttpServer::AsyncRoute recording(HttpResponse reply) {
        return [this, reply](const HttpRequest& request) -> asio::awaitable<HttpResponse> {
            {
                const std::lock_guard lock(mutex_);
                seen_ = request;
            }
            co_return reply;
        };
    }

    std::optional<HttpRequest> seen() {
        const std::lock_guard lock(mutex_);
        return seen_;
    }

    std::uint16_t port() const { return server_.port(); }

    /// Before the io_context: the connections' frames, destroyed with it, still decrement its gauges.
    prometheus::Registry metrics_;
    asio::io_context io_;
    asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(io_);
    HttpServer server_{io_.get_executor(), "127.0.0.1", 0};
    std::thread thread_;
    std::mutex mutex_;
    std::optional<HttpRequest> seen_;
};

HttpResponse created() {
    return HttpResponse{201, "application/json", R"({"id":"42"})", {{"Location", "/v1/jobs/42"}}};
}

TEST(HttpRequestTest, LooksUpHeadersParamsAndQueryParameters) {
    HttpRequest request;
    request.headers = {{"Content-Type", "application/json"}, {"X-Trace", "a"}, {"x-trace", "b"}};
    request.params = {{"id", "a/b"}};
    request.query = "a=1&name=J%C3%B6rg+M%2B&flag&a=2";

    EXPECT_EQ(request.header("content-type"), "application/json");
    EXPECT_EQ(request.header("X-TRACE"), "a");
    EXPECT_EQ(request.header("Authorization"), std::nullopt);
    EXPECT_EQ(request.param("id"), "a/b");
    EXPECT_EQ(request.param("ID"), std::nullopt);
    EXPECT_EQ(request.query_param("a"), "1");
    EXPECT_EQ(request.query_param("name"), "J\xC3\xB6rg M+");
    EXPECT_EQ(request.query_param("flag"), "");
    EXPECT_EQ(request.query_param("missing"), std::nullopt);

    request.query = "a=%zz";
    EXPECT_EQ(request.query_param("a"), std::nullopt);
}

TEST_F(HttpServerTest, GetRoutesKeepTheirPlainTextBehaviour) {
    server_.get("/healthz", [] { return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"}; });
    server_.get("/broken", []() -> HttpResponse { throw std::runtime_error("boom"); });
    start();
    Connection connection(port());

    auto ok = connection.exchange("GET", "/healthz?verbose=1");
    EXPECT_EQ(ok.result_int(), 200);
    EXPECT_EQ(ok[bhttp::field::content_type], "text/plain; charset=utf-8");
    EXPECT_EQ(ok.body(), "ok\n");

    auto wrong_method = connection.exchange("POST", "/healthz", "{}");
    EXPECT_EQ(wrong_method.result_int(), 405);
    EXPECT_EQ(wrong_method[bhttp::field::allow], "GET, HEAD");
    EXPECT_EQ(wrong_method.body(), "method not allowed\n");

    auto missing = connection.exchange("GET", "/nowhere");
    EXPECT_EQ(missing.result_int(), 404);
    EXPECT_EQ(missing.body(), "not found\n");

    auto broken = connection.exchange("GET", "/broken");
    EXPECT_EQ(broken.result_int(), 500);
    EXPECT_EQ(broken.body(), "internal error\n");
}

TEST_F(HttpServerTest, PostReachesTheHandlerWithBodyHeadersParamsAndQuery) {
    server_.get("/healthz", [] { return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"}; });
    server_.route("POST", "/v1/queues/{queue}/jobs", recording(created()));
    start();

    asio::io_context client_io;
    http::ClientSettings settings;
    settings.base_url = fmt::format("http://127.0.0.1:{}", port());
    http::Client client(client_io.get_executor(), settings);
    const http::Request request{.method = "POST",
                                .path = "/v1/queues/e%2Fmail/jobs?priority=high&note=a%20b+c",
                                .headers = {{"X-Request-Id", "r-1"}, {"Authorization", "Bearer t"}},
                                .body = R"({"to":"a@example.com"})"};
    const auto response = run(client_io, client.send(request));

    EXPECT_EQ(response.status, 201);
    EXPECT_EQ(response.body, R"({"id":"42"})");
    EXPECT_EQ(response.header("Location"), "/v1/jobs/42");
    EXPECT_EQ(response.header("Content-Type"), "application/json");
    const auto received = seen();
    ASSERT_TRUE(received.has_value());
    EXPECT_EQ(received->method, "POST");
    EXPECT_EQ(received->path, "/v1/queues/e%2Fmail/jobs");
    EXPECT_EQ(received->query, "priority=high&note=a%20b+c");
    EXPECT_EQ(received->param("queue"), "e/mail");
    EXPECT_EQ(received->query_param("priority"), "high");
    EXPECT_EQ(received->query_param("note"), "a b c");
    EXPECT_EQ(received->header("x-request-id"), "r-1");
    EXPECT_EQ(received->header("authorization"), "Bearer t");
    EXPECT_EQ(received->header("content-type"), "application/json");
    EXPECT_EQ(received->body, R"({"to":"a@example.com"})");
    EXPECT_EQ(received->remote_address, "127.0.0.1");

    // get() routes live alongside.
    Connection connection(port());
    EXPECT_EQ(connection.exchange("GET", "/healthz").body(), "ok\n");
}

TEST_F(HttpServerTest, ChunkedBodyWithinTheLimitArrivesWhole) {
    server_.set_limits({.max_body_bytes = kBodyLimit});
    server_.route("POST", "/v1/jobs", recording(created()));
    start();
    Connection connection(port());

    connection.send(post_header("/v1/jobs", "Transfer-Encoding: chunked\r\n") +
                    "5\r\n{\"a\":\r\n3\r\n1}\n\r\n0\r\n\r\n");
    EXPECT_EQ(connection.read().result_int(), 201);
    ASSERT_TRUE(seen().has_value());
    EXPECT_EQ(seen()->body, "{\"a\":1}\n");
}

TEST_F(HttpServerTest, UnknownPathIsJsonNotFoundAndWrongMethodListsAllowed) {
    auto ok = [](const HttpRequest&) -> asio::awaitable<HttpResponse> {
        HttpResponse response{200, "application/json", "{}"};
        co_return response;
    };
    server_.route("GET", "/v1/scheduled/{id}", ok);
    server_.route("DELETE", "/v1/scheduled/{id}", ok);
    server_.route("POST", "/v1/scheduled", ok);
    start();
    Connection connection(port());

    auto missing = connection.exchange("GET", "/v1/nowhere");
    EXPECT_EQ(missing.result_int(), 404);
    EXPECT_EQ(missing[bhttp::field::content_type], "application/json");
    EXPECT_EQ(missing.body(), R"({"error":"not found"})");

    // A {name} segment needs something to match.
    EXPECT_EQ(connection.exchange("GET", "/v1/scheduled/").result_int(), 404);

    auto wrong_method = connection.exchange("PUT", "/v1/scheduled/7", "{}");
    EXPECT_EQ(wrong_method.result_int(), 405);
    EXPECT_EQ(wrong_method[bhttp::field::allow], "GET, DELETE");
    EXPECT_EQ(wrong_method[bhttp::field::content_type], "application/json");
    EXPECT_EQ(wrong_method.body(), R"({"error":"method not allowed"})");

    EXPECT_EQ(connection.exchange("GET", "/v1/scheduled").result_int(), 405);
    EXPECT_EQ(connection.exchange("DELETE", "/v1/scheduled/7").result_int(), 200);

    auto malformed = connection.exchange("GET", "/v1/scheduled/%zz");
    EXPECT_EQ(malformed.result_int(), 400);
    EXPECT_EQ(malformed.body(), R"({"error":"malformed request target"})");
}

TEST_F(HttpServerTest, LiteralSegmentWinsOverParameterWhateverTheOrder) {
    auto answer = [](std::string which) {
        return [which](const HttpRequest& request) -> asio::awaitable<HttpResponse> {
            HttpResponse response{200, "text/plain", which + ":" + std::string(request.param("id").value_or("-"))};
            co_return response;
        };
    };
    server_.route("GET", "/v1/scheduled/{id}", answer("one"));
    server_.route("GET", "/v1/scheduled/stats", answer("stats"));
    start();
    Connection connection(port());

    EXPECT_EQ(connection.exchange("GET", "/v1/scheduled/stats").body(), "stats:-");
    EXPECT_EQ(connection.exchange("GET", "/v1/scheduled/17").body(), "one:17");
}

TEST_F(HttpServerTest, RefusesBadRegistrations) {
    auto ok = [](const HttpRequest&) -> asio::awaitable<HttpResponse> {
        HttpResponse response;
        co_return response;
    };
    EXPECT_THROW(server_.route("GET", "v1/jobs", ok), std::invalid_argument);
    EXPECT_THROW(server_.route("GET", "/v1/jobs", nullptr), std::invalid_argument);
    server_.route("GET", "/v1/jobs/{id}", ok);
    EXPECT_THROW(server_.route("GET", "/v1/jobs/{job}", ok), std::invalid_argument);
    EXPECT_NO_THROW(server_.route("DELETE", "/v1/jobs/{job}", ok));
}

TEST_F(HttpServerTest, HandlerExceptionIsJson500AndTheConnectionServesOn) {
    server_.route("POST", "/v1/boom", [](const HttpRequest&) -> asio::awaitable<HttpResponse> {
        asio::steady_timer timer(co_await asio::this_coro::executor, 1ms);
        co_await timer.async_wait(asio::use_awaitable);
        throw std::runtime_error("database on fire");
    });
    // Not a coroutine: it throws when called, before there is anything to await.
    server_.route("POST", "/v1/boom-now", [](const HttpRequest&) -> asio::awaitable<HttpResponse> {
        throw std::runtime_error("no coroutine at all");
    });
    server_.route("POST", "/v1/jobs", recording(created()));
    start();
    Connection connection(port());

    for (const auto* target : {"/v1/boom", "/v1/boom-now"}) {
        auto failed = connection.exchange("POST", target, "{}");
        EXPECT_EQ(failed.result_int(), 500) << target;
        EXPECT_EQ(failed[bhttp::field::content_type], "application/json");
        EXPECT_EQ(failed.body(), R"({"error":"internal error"})");
        EXPECT_TRUE(failed.keep_alive());
    }

    EXPECT_EQ(connection.exchange("POST", "/v1/jobs", "{}").result_int(), 201);
}

TEST_F(HttpServerTest, KeepAliveServesTwoRequestsOnOneConnection) {
    server_.route("POST", "/v1/jobs", recording(created()));
    start();
    Connection connection(port());

    auto first = connection.exchange("POST", "/v1/jobs", R"({"n":1})");
    EXPECT_EQ(first.result_int(), 201);
    EXPECT_TRUE(first.keep_alive());
    auto second = connection.exchange("POST", "/v1/jobs", R"({"n":2})");
    EXPECT_EQ(second.result_int(), 201);
    ASSERT_TRUE(seen().has_value());
    EXPECT_EQ(seen()->body, R"({"n":2})");
}

TEST_F(HttpServerTest, AsyncHandlerAwaitsWithoutHoldingUpOtherConnections) {
    asio::steady_timer gate(io_);
    std::promise<void> waiting;
    server_.route("GET", "/v1/slow", [&](const HttpRequest&) -> asio::awaitable<HttpResponse> {
        gate.expires_after(kClientTimeout);
        waiting.set_value();
        auto [error] = co_await gate.async_wait(asio::as_tuple(asio::use_awaitable));
        HttpResponse response{200, "text/plain", error == asio::error::operation_aborted ? "released" : "timed out"};
        co_return response;
    });
    server_.route("POST", "/v1/release", [&](const HttpRequest&) -> asio::awaitable<HttpResponse> {
        gate.cancel();
        HttpResponse response{204, "text/plain", ""};
        co_return response;
    });
    start();
    Connection slow(port());
    Connection fast(port());

    slow.send("GET /v1/slow HTTP/1.1\r\nHost: test\r\n\r\n");
    ASSERT_EQ(waiting.get_future().wait_for(kClientTimeout), std::future_status::ready);
    EXPECT_EQ(fast.exchange("POST", "/v1/release").result_int(), 204);
    EXPECT_EQ(slow.read().body(), "released");
}

TEST_F(HttpServerTest, OversizeContentLengthGets413EvenWhileTheClientIsStillSending) {
    server_.set_limits({.max_body_bytes = kBodyLimit});
    server_.route("POST", "/v1/jobs", recording(created()));
    start();
    Connection connection(port());

    connection.send(post_header("/v1/jobs", fmt::format("Content-Length: {}\r\n", kHugeBody)) +
                    std::string(kHugeBody, 'x'));
    auto refused = connection.read();
    EXPECT_EQ(refused.result_int(), 413);
    EXPECT_EQ(refused[bhttp::field::content_type], "application/json");
    EXPECT_EQ(refused.body(), R"({"error":"request body larger than 65536 bytes"})");
    EXPECT_FALSE(refused.keep_alive());
    EXPECT_EQ(connection.read_end(), asio::error::eof);
    EXPECT_FALSE(seen().has_value());
}

TEST_F(HttpServerTest, OversizeContentLengthGets413BeforeTheBodyIsSent) {
    server_.set_limits({.max_body_bytes = kBodyLimit});
    server_.route("POST", "/v1/jobs", recording(created()));
    start();
    Connection connection(port());

    connection.send(post_header("/v1/jobs", fmt::format("Content-Length: {}\r\n", kBodyLimit + 1)));
    EXPECT_EQ(connection.read().result_int(), 413);
    EXPECT_EQ(connection.read_end(), asio::error::eof);
}

TEST_F(HttpServerTest, OversizeChunkedBodyGets413) {
    server_.set_limits({.max_body_bytes = kBodyLimit});
    server_.route("POST", "/v1/jobs", recording(created()));
    start();
    Connection connection(port());

    const std::string chunk = fmt::format("{:x}\r\n{}\r\n", kBodyLimit / 4, std::string(kBodyLimit / 4, 'x'));
    std::string request = post_header("/v1/jobs", "Transfer-Encoding: chunked\r\n");
    for (std::size_t sent = 0; sent < kHugeBody; sent += kBodyLimit / 4) {
        request += chunk;
    }
    request += "0\r\n\r\n";
    connection.send(request);
    auto refused = connection.read();
    EXPECT_EQ(refused.result_int(), 413);
    EXPECT_FALSE(refused.keep_alive());
    EXPECT_EQ(connection.read_end(), asio::error::eof);
    EXPECT_FALSE(seen().has_value());
}

TEST_F(HttpServerTest, AnswersExpectContinue) {
    server_.set_limits({.max_body_bytes = kBodyLimit});
    server_.route("POST", "/v1/jobs", recording(created()));
    start();

    Connection accepted(port());
    accepted.send(post_header("/v1/jobs", "Content-Length: 7\r\nExpect: 100-continue\r\n"));
    EXPECT_EQ(accepted.read().result_int(), 100);
    accepted.send(R"({"a":1})");
    EXPECT_EQ(accepted.read().result_int(), 201);
    ASSERT_TRUE(seen().has_value());
    EXPECT_EQ(seen()->body, R"({"a":1})");

    Connection refused(port());
    refused.send(post_header("/v1/jobs", fmt::format("Content-Length: {}\r\nExpect: 100-continue\r\n", kHugeBody)));
    EXPECT_EQ(refused.read().result_int(), 413);
    EXPECT_EQ(refused.read_end(), asio::error::eof);
}

/// Runs the curl binary and returns what it printed.
std::string run_curl(const std::string& arguments) {
    const auto command = "curl -sS " + arguments + " 2>&1";
    std::FILE* pipe = ::popen(command.c_str(), "r");
    if (pipe == nullptr) {
        throw std::runtime_error("cannot run curl");
    }
    std::string output;
    std::array<char, 4096> chunk{};
    while (const auto read = std::fread(chunk.data(), 1, chunk.size(), pipe)) {
        output.append(chunk.data(), read);
    }
    ::pclose(pipe);
    return output;
}

TEST_F(HttpServerTest, CurlUploadsWithAndWithoutExpectContinue) {
    if (std::system("curl --version > /dev/null 2>&1") != 0) {
        GTEST_SKIP() << "no curl binary";
    }
    server_.set_limits({.max_body_bytes = kBodyLimit});
    server_.route("POST", "/v1/upload", [this](const HttpRequest& request) -> asio::awaitable<HttpResponse> {
        {
            const std::lock_guard lock(mutex_);
            seen_ = request;
        }
        HttpResponse response{200, "application/json", fmt::format(R"({{"bytes":{}}})", request.body.size())};
        co_return response;
    });
    start();
    const auto directory = std::filesystem::path(::testing::TempDir()) / fmt::format("http_server_test_{}", ::getpid());
    std::filesystem::create_directories(directory);
    const auto write_file = [&](const std::string& name, std::size_t size) {
        const auto path = directory / name;
        std::ofstream(path, std::ios::binary) << std::string(size, 'x');
        return path.string();
    };
    const auto small = write_file("small", kBodyLimit / 2);
    const auto large = write_file("large", kHugeBody);
    const auto url = fmt::format("http://127.0.0.1:{}/v1/upload", port());
    // Without a 100 Continue, curl would wait out --expect100-timeout before sending the body anyway.
    const auto post =
        fmt::format("--expect100-timeout 20 -o - -w ' %{{http_code}}' -H 'Content-Type: application/json' {}", url);

    const auto started = std::chrono::steady_clock::now();
    EXPECT_EQ(run_curl(fmt::format("-H 'Expect: 100-continue' --data-binary @{} {}", small, post)),
              fmt::format(R"({{"bytes":{}}} 200)", kBodyLimit / 2));
    EXPECT_LT(std::chrono::steady_clock::now() - started, 10s);
    ASSERT_TRUE(seen().has_value());
    EXPECT_EQ(seen()->header("Expect"), "100-continue");

    const auto refusal = fmt::format(R"({{"error":"request body larger than {} bytes"}} 413)", kBodyLimit);
    EXPECT_EQ(run_curl(fmt::format("-H 'Expect: 100-continue' --data-binary @{} {}", large, post)), refusal);
    EXPECT_EQ(run_curl(fmt::format("-H 'Expect:' --data-binary @{} {}", large, post)), refusal);

    std::filesystem::remove_all(directory);
}

std::string get_request(std::string_view target, std::string_view extra_headers = {}) {
    return fmt::format("GET {} HTTP/1.1\r\nHost: test\r\n{}\r\n", target, extra_headers);
}

TEST_F(HttpServerTest, OversizeHeadersGet431AndTheConnectionCloses) {
    server_.set_limits({.max_header_bytes = 1024});
    server_.route("GET", "/v1/items", recording(created()));
    start();
    Connection connection(port());

    connection.send(get_request("/v1/items", fmt::format("X-Padding: {}\r\n", std::string(2000, 'a'))));
    auto refused = connection.read();
    EXPECT_EQ(refused.result_int(), 431);
    EXPECT_EQ(refused.body(), R"({"error":"request line and headers larger than 1024 bytes"})");
    EXPECT_FALSE(refused.keep_alive());
    EXPECT_EQ(connection.read_end(), asio::error::eof);
    EXPECT_FALSE(seen().has_value());
}

TEST_F(HttpServerTest, Http2PrefaceGets505) {
    server_.route("GET", "/v1/items", recording(created()));
    start();
    for (const auto* preface : {"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "GET /v1/items HTTP/3.0\r\nHost: test\r\n\r\n"}) {
        Connection connection(port());
        connection.send(preface);
        auto refused = connection.read();
        EXPECT_EQ(refused.result_int(), 505) << preface;
        EXPECT_EQ(connection.read_end(), asio::error::eof);
    }
    EXPECT_FALSE(seen().has_value());
}

TEST_F(HttpServerTest, MalformedRequestsGet400AndTheServerServesOn) {
    server_.get("/healthz", [] { return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"}; });
    start();
    for (const auto* garbage : {"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                                "GET /x HTTP/1.1\r\nBad Header\r\n\r\n", "G\x01T / HTTP/1.1\r\n\r\n"}) {
        Connection connection(port());
        connection.send(garbage);
        auto refused = connection.read();
        EXPECT_EQ(refused.result_int(), 400) << garbage;
        EXPECT_EQ(refused.body().rfind("malformed HTTP request", 0), 0U) << refused.body();
        EXPECT_EQ(connection.read_end(), asio::error::eof);
    }
    Connection healthy(port());
    EXPECT_EQ(healthy.exchange("GET", "/healthz").result_int(), 200);
}

TEST_F(HttpServerTest, ConnectionsOverTheCapGet503AndAreCounted) {
    server_.export_metrics(metrics_);
    server_.set_limits({.max_connections = 2});
    server_.get("/healthz", [] { return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"}; });
    start();
    auto first = std::make_unique<Connection>(port());
    Connection second(port());
    EXPECT_EQ(first->exchange("GET", "/healthz").result_int(), 200);
    EXPECT_EQ(second.exchange("GET", "/healthz").result_int(), 200);

    Connection third(port());
    auto refused = third.read();
    EXPECT_EQ(refused.result_int(), 503);
    EXPECT_EQ(refused[bhttp::field::retry_after], "1");
    EXPECT_FALSE(refused.keep_alive());
    const auto exported = serialize_metrics(metrics_);
    EXPECT_NE(exported.find(R"(conveyor_http_refused_total{reason="connection_limit"} 1)"), std::string::npos);
    EXPECT_NE(exported.find("conveyor_http_connections 2"), std::string::npos) << exported;

    // Once a connection ends, its place is free again.
    first.reset();
    const auto deadline = std::chrono::steady_clock::now() + kClientTimeout;
    unsigned status = 0;
    while (status != 200 && std::chrono::steady_clock::now() < deadline) {
        Connection next(port());
        status = next.exchange("GET", "/healthz").result_int();
    }
    EXPECT_EQ(status, 200U);
}

TEST_F(HttpServerTest, ClientsOverTheirRateGet429BeforeAnyHandlerAndAreDisconnected) {
    server_.set_limits({.client_rate = 1});
    server_.get("/healthz", [] { return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"}; });
    server_.route("GET", "/v1/items", recording(created()));
    start();
    Connection connection(port());
    // A burst of two seconds' worth, then the limit.
    EXPECT_EQ(connection.exchange("GET", "/v1/items").result_int(), 201);
    EXPECT_EQ(connection.exchange("GET", "/v1/items").result_int(), 201);
    auto refused = connection.exchange("GET", "/v1/nowhere");
    EXPECT_EQ(refused.result_int(), 429);
    EXPECT_EQ(refused[bhttp::field::retry_after], "1");
    EXPECT_FALSE(refused.keep_alive());
    EXPECT_EQ(connection.read_end(), asio::error::eof);
    // Probes and metrics are never limited.
    Connection probe(port());
    for (int i = 0; i < 5; ++i) {
        EXPECT_EQ(probe.exchange("GET", "/healthz").result_int(), 200);
    }
}

TEST_F(HttpServerTest, XForwardedForNamesTheClientOnlyBehindATrustedProxy) {
    server_.set_limits({.client_rate = 1, .trusted_proxies = IpNetworks::parse("127.0.0.0/8")});
    server_.route("GET", "/v1/items", recording(created()));
    start();
    Connection connection(port());
    for (int i = 0; i < 2; ++i) {
        connection.send(get_request("/v1/items", "X-Forwarded-For: 6.6.6.6, 198.51.100.7\r\n"));
        EXPECT_EQ(connection.read().result_int(), 201);
    }
    EXPECT_EQ(seen()->remote_address, "198.51.100.7");
    connection.send(get_request("/v1/items", "X-Forwarded-For: 198.51.100.7\r\n"));
    EXPECT_EQ(connection.read().result_int(), 429) << "the same client, whatever it wrote to the left";
    Connection other(port());
    other.send(get_request("/v1/items", "X-Forwarded-For: 198.51.100.8\r\n"));
    EXPECT_EQ(other.read().result_int(), 201);
}

TEST_F(HttpServerTest, XForwardedForFromAnUntrustedPeerIsIgnored) {
    server_.set_limits({.client_rate = 1});
    server_.route("GET", "/v1/items", recording(created()));
    start();
    Connection connection(port());
    std::vector<unsigned> statuses;
    for (int i = 0; i < 3; ++i) {
        connection.send(get_request("/v1/items", fmt::format("X-Forwarded-For: 198.51.100.{}\r\n", i)));
        statuses.push_back(connection.read().result_int());
    }
    EXPECT_EQ(statuses, (std::vector<unsigned>{201, 201, 429}));
    EXPECT_EQ(seen()->remote_address, "127.0.0.1");
}

}  // namespace
}  // namespace conveyor
