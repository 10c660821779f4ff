// Raw bytes through a real conveyor::HttpServer, over a loopback TCP connection, as a hostile client sends them.
//
// The server runs in this process on 127.0.0.1 (port 0), on an io_context thread started once: GET /healthz (a
// get() route), POST /v1/jobs (parse_enqueue_request, answered 202 or 400) and GET /v1/items/{id}, with a 4 KiB
// body limit, no client rate limit and at most 16 connections. Each input is one connection: connect, send the
// bytes, half-close, read until the server closes (or 1 s passes).
//
// Invariants: the server never crashes (ASan/UBSan watch its thread too); whatever it answers starts with
// "HTTP/1."; and no answer is a 500, which here can only mean an exception other than InvalidRequest escaped
// parse_enqueue_request.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>

#include "conveyor/core/http_server.hpp"
#include "conveyor/jobs/jobs.hpp"
#include "enqueue_request.hpp"

namespace {

namespace asio = boost::asio;
namespace scheduler = conveyor::scheduler;

[[noreturn]] void violated(const char* what, std::string_view detail = {}) {
    std::fprintf(stderr, "fuzz_http_server: invariant violated: %s\n%.*s\n", what,
                 static_cast<int>(std::min<std::size_t>(detail.size(), 2048)), detail.data());
    std::abort();
}

// Created once and never destroyed: the io_context thread runs until the process exits, and destroying the server
// under it at exit would only add noise.
asio::io_context* io = nullptr;
conveyor::HttpServer* server = nullptr;
prometheus::Registry* metrics = nullptr;
/// conveyor_http_connections: the connections the server is serving.
prometheus::Gauge* connections = nullptr;
std::uint16_t port = 0;
std::size_t unanswered_timeouts = 0;

const scheduler::JobCatalogue& catalogue() {
    static const auto validators = conveyor::jobs::payload_validators();
    return validators;
}

asio::awaitable<conveyor::HttpResponse> enqueue(const conveyor::HttpRequest& request) {
    conveyor::HttpResponse response{202, "application/json", R"({"ids":[]})"};
    try {
        const auto parsed =
            scheduler::parse_enqueue_request(request.body, catalogue(), std::chrono::system_clock::now());
        response.body = R"({"accepted":)" + std::to_string(parsed.jobs.size()) + "}";
    } catch (const scheduler::InvalidRequest& e) {
        response = conveyor::HttpResponse{400, "application/json", R"({"error":"invalid request"})"};
    }
    co_return response;
}

/// Answers with the lengths of what it reads, never the bytes themselves: an echoed "\r\nHTTP/1.1 500" would look like
/// a failure below.
asio::awaitable<conveyor::HttpResponse> item(const conveyor::HttpRequest& request) {
    const auto id = request.param("id").value_or("");
    const auto verbose = request.query_param("verbose");
    const auto agent = request.header("User-Agent");
    conveyor::HttpResponse response{200, "text/plain; charset=utf-8",
                                    std::to_string(id.size()) + " " + std::to_string(verbose ? verbose->size() : 0) +
                                        " " + std::to_string(agent ? agent->size() : 0) + " " +
                                        std::to_string(request.remote_address.size()) + "\n"};
    co_return response;
}

void start_server() {
    spdlog::set_level(spdlog::level::off);
    (void)catalogue();
    io = new asio::io_context(1);
    server = new conveyor::HttpServer(io->get_executor(), "127.0.0.1", 0);
    server->get("/healthz", [] { return conveyor::HttpResponse{200, "text/plain; charset=utf-8", "ok\n"}; });
    server->route("POST", "/v1/jobs", enqueue);
    server->route("GET", "/v1/items/{id}", item);
    conveyor::HttpLimits limits;
    limits.max_body_bytes = 4096;
    limits.client_rate = 0;
    limits.max_connections = 16;
    limits.trusted_proxies = conveyor::IpNetworks::parse("127.0.0.1");
    server->set_limits(std::move(limits));
    metrics = new prometheus::Registry;
    server->export_metrics(*metrics);
    // The registry merges a family added again under the same name: this is the server's own gauge.
    connections = &prometheus::BuildGauge()
                       .Name("conveyor_http_connections")
                       .Help("HTTP connections open now")
                       .Register(*metrics)
                       .Add({});
    server->start();
    port = server->port();
    std::fprintf(stderr, "fuzz_http_server: the server listens on 127.0.0.1:%u\n", static_cast<unsigned>(port));
    std::thread([] {
        auto work = asio::make_work_guard(*io);
        io->run();
    }).detach();
}

int connect_client() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        std::perror("fuzz_http_server: socket");
        std::abort();
    }
    timeval timeout{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    // Closed with a reset once the answer is read: each of the tens of thousands of connections of a run would
    // otherwise keep an ephemeral port in TIME_WAIT for a minute.
    linger abort_on_close{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int error = ::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0 ? 0 : errno;
    if (error == EINTR) {
        // libFuzzer's timer signal (-timeout) interrupted the wait; the connection goes on being made.
        pollfd writable{fd, POLLOUT, 0};
        while (::poll(&writable, 1, 1000) < 0 && errno == EINTR) {
        }
        socklen_t length = sizeof error;
        if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
            error = errno;
        }
    }
    if (error != 0) {
        std::fprintf(stderr, "fuzz_http_server: connect: %s\n", std::strerror(error));
        std::abort();
    }
    return fd;
}

/// Sends what it can: the server may answer and close before it has read everything (a refusal, a request with
/// Connection: close followed by more bytes).
void send_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        const auto sent = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) {
            continue;
        }
        if (sent <= 0) {
            return;
        }
        bytes.remove_prefix(static_cast<std::size_t>(sent));
    }
}

/// What the server sends until it closes; whether it closed (rather than the read timing out).
bool receive_all(int fd, std::string& received) {
    char buffer[16 * 1024];
    while (true) {
        const auto got = ::recv(fd, buffer, sizeof buffer, 0);
        if (got > 0) {
            received.append(buffer, static_cast<std::size_t>(got));
            continue;
        }
        if (got < 0 && errno == EINTR) {
            continue;
        }
        return got == 0 || errno == ECONNRESET;
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
    start_server();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const int fd = connect_client();
    send_all(fd, {reinterpret_cast<const char*>(data), size});
    ::shutdown(fd, SHUT_WR);
    std::string received;
    const bool closed = receive_all(fd, received);
    ::close(fd);
    // The server may still be finishing the connection (its coroutine ends after the close the client saw); waiting
    // for that keeps the coverage and the allocations of one input within its run, not the next one's.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    while (connections->Value() > 0 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    if (!received.empty() && !received.starts_with("HTTP/1.")) {
        violated("the answer does not start with HTTP/1.", received);
    }
    // A 500 means a handler threw. No handler here echoes what it received, so a status line can only be one.
    for (const std::string_view status : {"HTTP/1.1 500 ", "HTTP/1.0 500 "}) {
        if (received.find(status) != std::string::npos) {
            violated("a handler failed with 500", received);
        }
    }
    if (!closed && ++unanswered_timeouts <= 10) {
        std::fprintf(stderr,
                     "fuzz_http_server: the server kept a half-closed connection open for 1 s (%zu bytes "
                     "sent, %zu received)\n",
                     size, received.size());
    }
    return 0;
}
