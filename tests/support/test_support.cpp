#include "test_support.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/uuid/random_generator.hpp>
#include <boost/uuid/uuid_io.hpp>
#include <cstdlib>
#include <fstream>
#include <future>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "conveyor/core/pg.hpp"
#include "conveyor/core/topology.hpp"

extern char** environ;

namespace conveyor::testing {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using boost::system::error_code;

std::string amqp_url() {
    const char* url = std::getenv("CONVEYOR_AMQP_URL");
    return url != nullptr && *url != '\0' ? url : "amqp://guest:guest@127.0.0.1:5672/%2f";
}

std::string pg_url() {
    for (const char* name : {"CONVEYOR_PG_OWNER_URL", "CONVEYOR_PG_URL"}) {
        if (const char* url = std::getenv(name); url != nullptr && *url != '\0') {
            return url;
        }
    }
    return "postgresql://postgres@127.0.0.1:5432/conveyor";
}

std::string app_pg_url() {
    const char* url = std::getenv("CONVEYOR_PG_URL");
    return url != nullptr && *url != '\0' ? url : "postgresql://conveyor_app@127.0.0.1:5432/conveyor";
}

std::filesystem::path binary_dir() {
    return CONVEYOR_BINARY_DIR;
}
std::filesystem::path source_dir() {
    return CONVEYOR_SOURCE_DIR;
}

namespace {

std::vector<char*> c_strings(std::vector<std::string>& strings) {
    std::vector<char*> pointers;
    pointers.reserve(strings.size() + 1);
    for (auto& s : strings) {
        pointers.push_back(s.data());
    }
    pointers.push_back(nullptr);
    return pointers;
}

int decode_status(int status) {
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

Process::Process(std::filesystem::path program, std::vector<std::string> args, std::filesystem::path log_file,
                 std::map<std::string, std::string> extra_env)
    : log_file_(std::move(log_file)) {
    std::vector<std::string> argv{program.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
        const std::string entry(*e);
        if (!extra_env.contains(entry.substr(0, entry.find('=')))) {
            env.push_back(entry);
        }
    }
    for (const auto& [key, value] : extra_env) {
        env.push_back(key + "=" + value);
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    auto argv_c = c_strings(argv);
    auto env_c = c_strings(env);
    const int rc = posix_spawn(&pid_, argv[0].c_str(), &actions, nullptr, argv_c.data(), env_c.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
        throw std::runtime_error(fmt::format("cannot start {}: {}", argv[0], std::strerror(rc)));
    }
}

Process::~Process() {
    if (running()) {
        ::kill(pid_, SIGKILL);
        (void)wait(std::chrono::seconds(10));
    }
}

void Process::signal(int signo) const {
    ::kill(pid_, signo);
}

std::optional<int> Process::wait(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!status_) {
        int status = 0;
        const pid_t done = ::waitpid(pid_, &status, WNOHANG);
        if (done == pid_) {
            status_ = decode_status(status);
            break;
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            return std::nullopt;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return status_;
}

bool Process::running() {
    return !wait(std::chrono::milliseconds(0)).has_value();
}

std::string Process::log() const {
    std::ifstream in(log_file_);
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

std::pair<int, std::string> run_command(const std::vector<std::string>& command, std::chrono::seconds timeout) {
    const auto log = std::filesystem::temp_directory_path() /
                     fmt::format("conveyor-command-{}-{}.log", ::getpid(),
                                 std::chrono::steady_clock::now().time_since_epoch().count());
    std::vector<std::string> args(command.begin() + 1, command.end());
    Process process(command.front(), args, log);
    const auto status = process.wait(timeout);
    if (!status) {
        process.signal(SIGKILL);
        (void)process.wait(std::chrono::seconds(5));
    }
    auto output = process.log();
    std::filesystem::remove(log);
    return {status.value_or(-1), std::move(output)};
}

namespace {

std::optional<std::pair<unsigned, std::string>> http_call(std::uint16_t port, http::verb verb, const std::string& path,
                                                          const std::string& json) {
    try {
        asio::io_context io;
        asio::ip::tcp::socket socket(io);
        socket.connect({asio::ip::make_address("127.0.0.1"), port});
        const timeval timeout{5, 0};
        ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
        http::request<http::string_body> request{verb, path, 11};
        request.set(http::field::host, "127.0.0.1");
        request.keep_alive(false);
        if (verb == http::verb::post) {
            request.set(http::field::content_type, "application/json");
            request.body() = json;
            request.prepare_payload();
        }
        http::write(socket, request);
        beast::flat_buffer buffer;
        http::response<http::string_body> response;
        http::read(socket, buffer, response);
        return std::pair{response.result_int(), response.body()};
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

}  // namespace

std::optional<std::pair<unsigned, std::string>> http_get(std::uint16_t port, const std::string& path) {
    return http_call(port, http::verb::get, path, {});
}

std::optional<std::pair<unsigned, std::string>> http_post(std::uint16_t port, const std::string& path,
                                                          const std::string& json) {
    return http_call(port, http::verb::post, path, json);
}

double metric_sum(const std::string& exposition, const std::string& name, const std::vector<std::string>& labels) {
    double sum = 0;
    std::istringstream lines(exposition);
    std::string line;
    while (std::getline(lines, line)) {
        if (line.empty() || line[0] == '#' || !line.starts_with(name)) {
            continue;
        }
        const auto rest = line.substr(name.size());
        if (!rest.empty() && rest[0] != '{' && rest[0] != ' ') {
            continue;  // another metric whose name starts with this one
        }
        bool matches = true;
        for (const auto& label : labels) {
            matches = matches && rest.find(label) != std::string::npos;
        }
        if (matches) {
            sum += std::stod(line.substr(line.rfind(' ') + 1));
        }
    }
    return sum;
}

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!condition()) {
        if (std::chrono::steady_clock::now() >= deadline) {
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return true;
}

class Broker::Impl {
  public:
    Impl(std::string url, BrokerOptions options) : url_(std::move(url)), options_(options) {
        amqp::ConnectionSettings settings;
        settings.url = amqp::Url::parse(url_);
        settings.name = "conveyor tests";
        settings.max_connect_attempts = options.max_connect_attempts;
        settings.heartbeat = options.heartbeat;
        settings.connect_timeout = std::chrono::seconds(3);
        connection_ = std::make_unique<amqp::Connection>(settings, amqp::Topology{});
        connection_->start();
        thread_ = std::thread([this] { io_.run(); });
    }

    ~Impl() {
        work_.reset();
        thread_.join();
        connection_->stop();
    }

    template <typename T>
    T run(asio::awaitable<T> operation) {
        return asio::co_spawn(io_, std::move(operation), asio::use_future).get();
    }

    std::string url_;
    BrokerOptions options_;
    asio::io_context io_;
    asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
    std::unique_ptr<amqp::Connection> connection_;
    std::thread thread_;
};

Broker::Broker(std::string url, BrokerOptions options) : impl_(std::make_unique<Impl>(std::move(url), options)) {}
Broker::~Broker() = default;

void Broker::connect() {
    auto& connection = *impl_->connection_;
    const auto error = impl_->run([&]() -> asio::awaitable<error_code> {
        auto [e] = co_await connection.async_wait_ready(asio::as_tuple(asio::use_awaitable));
        co_return e;
    }());
    if (error) {
        throw std::runtime_error(fmt::format(
            "RabbitMQ is not reachable at {} ({}). Start the local stack with `deploy/local/services start`.",
            amqp::Url::parse(impl_->url_).redacted(), connection.last_error()));
    }
}

void Broker::reconnect() {
    auto url = impl_->url_;
    const auto options = impl_->options_;
    impl_.reset();
    impl_ = std::make_unique<Impl>(std::move(url), options);
    connect();
}

void Broker::publish(amqp::Message message) {
    auto& connection = *impl_->connection_;
    const auto error = impl_->run([&]() -> asio::awaitable<error_code> {
        auto [e] = co_await connection.async_publish(std::move(message), asio::as_tuple(asio::use_awaitable));
        co_return e;
    }());
    if (error) {
        throw std::runtime_error("publish failed: " + error.message());
    }
}

namespace {

/// Publishes a window of messages at once; the outcome of each, in order.
std::vector<error_code> publish_window(amqp::Connection& connection, std::vector<amqp::Message> messages) {
    std::vector<error_code> outcomes(messages.size());
    std::atomic<std::size_t> pending{messages.size()};
    std::promise<void> confirmed;
    for (std::size_t i = 0; i < messages.size(); ++i) {
        connection.async_publish(std::move(messages[i]), [&, i](error_code error) {
            outcomes[i] = error;
            if (--pending == 0) {
                confirmed.set_value();
            }
        });
    }
    if (!messages.empty()) {
        confirmed.get_future().wait();
    }
    return outcomes;
}

}  // namespace

void Broker::publish_all(std::vector<amqp::Message> messages) {
    constexpr std::size_t kWindow = 2000;
    // A quorum queue between leaders (its leader's node just died) nacks what it cannot take yet: a careful client
    // publishes those again, for a bounded while.
    constexpr int kNackedRounds = 120;
    constexpr auto kNackedPause = std::chrono::milliseconds(500);
    for (std::size_t begin = 0; begin < messages.size(); begin += kWindow) {
        const auto end = std::min(messages.size(), begin + kWindow);
        std::vector<amqp::Message> window(
            std::make_move_iterator(messages.begin() + static_cast<std::ptrdiff_t>(begin)),
            std::make_move_iterator(messages.begin() + static_cast<std::ptrdiff_t>(end)));
        for (int round = 0; !window.empty(); ++round) {
            const auto outcomes = publish_window(*impl_->connection_, window);
            std::vector<amqp::Message> nacked;
            for (std::size_t i = 0; i < window.size(); ++i) {
                if (outcomes[i] == amqp::Errc::nacked && round < kNackedRounds) {
                    nacked.push_back(std::move(window[i]));
                } else if (outcomes[i]) {
                    throw std::runtime_error(fmt::format("publish of {} failed: {}", window[i].properties.message_id,
                                                         outcomes[i].message()));
                }
            }
            window = std::move(nacked);
            if (!window.empty()) {
                std::this_thread::sleep_for(kNackedPause);
            }
        }
    }
}

amqp::Message Broker::job(const std::string& type, const std::string& body, std::string job_id) {
    static boost::uuids::random_generator uuids;
    amqp::Message message;
    message.exchange = topology::kJobsExchange;
    message.routing_key = type;
    message.body = body;
    message.properties.content_type = "application/json";
    message.properties.message_id = job_id.empty() ? boost::uuids::to_string(uuids()) : std::move(job_id);
    const auto now =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    amqp::set_header(message.properties.headers, "x-conveyor-enqueued-at", std::int64_t{now});
    return message;
}

amqp::QueueCounts Broker::counts(const std::string& queue) {
    auto& connection = *impl_->connection_;
    const auto [error, counts] = impl_->run([&]() -> asio::awaitable<std::pair<error_code, amqp::QueueCounts>> {
        auto [e, c] = co_await connection.async_queue_counts(queue, asio::as_tuple(asio::use_awaitable));
        co_return std::pair{e, c};
    }());
    if (error) {
        throw std::runtime_error(fmt::format("queue counts of {}: {}", queue, error.message()));
    }
    return counts;
}

std::uint32_t Broker::ready(const std::string& queue) {
    return counts(queue).messages;
}

void Broker::purge(const std::string& queue) {
    auto& connection = *impl_->connection_;
    const auto error = impl_->run([&]() -> asio::awaitable<error_code> {
        auto [e, c] = co_await connection.async_purge_queue(queue, asio::as_tuple(asio::use_awaitable));
        co_return e;
    }());
    if (error) {
        throw std::runtime_error(fmt::format("purge {}: {}", queue, error.message()));
    }
}

std::vector<amqp::Delivery> Broker::take(const std::string& queue, std::size_t count,
                                         std::chrono::milliseconds timeout) {
    amqp::ConnectionSettings settings;
    settings.url = amqp::Url::parse(impl_->url_);
    settings.name = "conveyor tests (take)";
    settings.max_connect_attempts = 3;
    amqp::Connection consumer(settings, amqp::Topology{});
    amqp::DeliveryChannel deliveries(impl_->io_, count);
    consumer.add_consumer({queue, static_cast<std::uint16_t>(count)}, deliveries);
    consumer.start();
    auto taken = impl_->run([&]() -> asio::awaitable<std::vector<amqp::Delivery>> {
        using namespace std::chrono;
        std::vector<amqp::Delivery> result;
        const auto deadline = steady_clock::now() + timeout;
        asio::steady_timer timer(co_await asio::this_coro::executor);
        while (result.size() < count && steady_clock::now() < deadline) {
            if (deliveries.try_receive([&](error_code, amqp::DeliveryBatch batch) {
                    for (auto& delivery : batch) {
                        result.push_back(std::move(delivery));
                    }
                })) {
                continue;
            }
            timer.expires_after(milliseconds(20));
            co_await timer.async_wait(asio::use_awaitable);
        }
        co_return result;
    }());
    for (const auto& delivery : taken) {
        consumer.ack(delivery);
    }
    consumer.stop();
    return taken;
}

class Database::Impl {
  public:
    explicit Impl(std::string url) : pool_(io_.get_executor(), settings(std::move(url))) {
        thread_ = std::thread([this] { io_.run(); });
    }
    ~Impl() {
        work_.reset();
        thread_.join();
    }

    static pg::Settings settings(std::string url) {
        pg::Settings settings;
        settings.url = std::move(url);
        settings.pool_size = 1;
        settings.application_name = "conveyor tests";
        return settings;
    }

    asio::io_context io_;
    asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
    pg::Pool pool_;
    std::thread thread_;
};

Database::Database(std::string url) : impl_(std::make_unique<Impl>(std::move(url))) {}
Database::~Database() = default;

Database::Rows Database::query(const std::string& sql, const std::vector<std::string>& params) {
    auto& pool = impl_->pool_;
    return asio::co_spawn(
               impl_->io_,
               [&]() -> asio::awaitable<Rows> {
                   auto transaction = co_await pool.begin();
                   std::string statement = sql;
                   // Parameters go through pg's text protocol like the product's own queries.
                   std::vector<pg::Param> values(params.begin(), params.end());
                   const auto result = co_await transaction.query_params(std::move(statement), std::move(values));
                   co_await transaction.commit();
                   Rows rows;
                   for (int r = 0; r < result.rows(); ++r) {
                       auto& row = rows.emplace_back();
                       for (int c = 0; c < result.columns(); ++c) {
                           row.emplace_back(result.text(r, c));
                       }
                   }
                   co_return rows;
               },
               asio::use_future)
        .get();
}

std::int64_t Database::scalar(const std::string& sql, const std::vector<std::string>& params) {
    const auto rows = query(sql, params);
    if (rows.empty() || rows[0].empty()) {
        throw std::runtime_error("no value from: " + sql);
    }
    return std::stoll(rows[0][0]);
}

}  // namespace conveyor::testing
