#include "conveyor/core/pg.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>
#include <cstring>
#include <deque>
#include <mutex>

#include "conveyor/core/redaction.hpp"

namespace conveyor::pg {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::string_view kConnectionFailure = "08006";
constexpr std::string_view kQueryCanceled = "57014";
constexpr std::string_view kTooManyConnections = "53300";
constexpr std::string_view kNulInText = "22021";  // character_not_in_repertoire, as the server says for bad bytes
/// The server's statement_timeout fires first; this is for a server that does not answer at all.
constexpr auto kClientDeadlineMargin = std::chrono::seconds(2);

std::string trimmed(const char* message) {
    std::string text = message == nullptr ? std::string() : std::string(message);
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
        text.pop_back();
    }
    return text;
}

bool is_numeric_address(const std::string& host) {
    in6_addr address{};
    return inet_pton(AF_INET, host.c_str(), &address) == 1 || inet_pton(AF_INET6, host.c_str(), &address) == 1;
}

/// One line for logs and dead-letter headers: the primary message and its detail, without libpq's layout.
Error server_error(const PGresult* result) {
    const char* sqlstate = PQresultErrorField(result, PG_DIAG_SQLSTATE);
    const char* primary = PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
    const char* detail = PQresultErrorField(result, PG_DIAG_MESSAGE_DETAIL);
    auto message = primary != nullptr ? trimmed(primary) : trimmed(PQresultErrorMessage(result));
    if (detail != nullptr) {
        message += fmt::format(" ({})", trimmed(detail));
    }
    std::replace(message.begin(), message.end(), '\n', ' ');
    return {sqlstate == nullptr ? std::string(kConnectionFailure) : std::string(sqlstate), message};
}

void log_notice(void* /*context*/, const char* message) {
    spdlog::debug("postgres: {}", trimmed(message));
}

}  // namespace

Error::Error(std::string sqlstate, const std::string& message)
    : std::runtime_error(fmt::format("postgres {}: {}", sqlstate, message)),
      sqlstate_(std::move(sqlstate)),
      message_(message) {}

bool Error::transient() const noexcept {
    const std::string_view code = sqlstate_;
    return code.starts_with("08") ||  // connection exceptions
           code == "40001" ||         // serialization_failure
           code == "40P01" ||         // deadlock_detected
           code == "55P03" ||         // lock_not_available
           code.starts_with("57") ||  // query_canceled, admin/crash shutdown, cannot_connect_now
           code.starts_with("53");    // insufficient resources, too many connections
}

Result::Result(pg_result* result) noexcept : result_(result) {}

Result::~Result() {
    PQclear(result_);
}

Result::Result(Result&& other) noexcept : result_(std::exchange(other.result_, nullptr)) {}

Result& Result::operator=(Result&& other) noexcept {
    if (this != &other) {
        PQclear(result_);
        result_ = std::exchange(other.result_, nullptr);
    }
    return *this;
}

int Result::rows() const noexcept {
    return result_ == nullptr ? 0 : PQntuples(result_);
}

int Result::columns() const noexcept {
    return result_ == nullptr ? 0 : PQnfields(result_);
}

bool Result::is_null(int row, int column) const noexcept {
    return PQgetisnull(result_, row, column) != 0;
}

std::string_view Result::text(int row, int column) const noexcept {
    return {PQgetvalue(result_, row, column), static_cast<std::size_t>(PQgetlength(result_, row, column))};
}

std::int64_t Result::integer(int row, int column) const {
    const auto value = text(row, column);
    std::int64_t number = 0;
    const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), number);
    if (error != std::errc{} || end != value.data() + value.size()) {
        throw Error("22P02", fmt::format("column {} of row {} is '{}', not an integer", column, row, value));
    }
    return number;
}

std::string_view Result::command_status() const noexcept {
    return result_ == nullptr ? std::string_view() : std::string_view(PQcmdStatus(result_));
}

std::int64_t Result::affected() const noexcept {
    const char* tuples = result_ == nullptr ? "" : PQcmdTuples(result_);
    std::int64_t number = 0;
    std::from_chars(tuples, tuples + std::strlen(tuples), number);
    return number;
}

/// One server connection. Used by one coroutine at a time (whoever holds its lease).
class Connection {
  public:
    Connection(const asio::any_io_executor& executor, const Settings& settings)
        : settings_(settings), socket_(executor), timer_(executor), resolver_(executor) {}

    ~Connection() { close(); }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    [[nodiscard]] bool usable() const noexcept {
        return conn_ != nullptr && !broken_ && PQstatus(conn_) == CONNECTION_OK;
    }
    [[nodiscard]] bool in_transaction() const noexcept {
        return conn_ != nullptr && PQtransactionStatus(conn_) != PQTRANS_IDLE;
    }
    [[nodiscard]] bool transaction_failed() const noexcept {
        return conn_ != nullptr && PQtransactionStatus(conn_) == PQTRANS_INERROR;
    }
    /// Hangs up now: a broken connection should not hold a server process until its next use.
    void discard() noexcept { close(); }

    /// The client-side deadline follows a statement_timeout the current transaction set for itself.
    void set_transaction_statement_timeout(std::optional<std::chrono::milliseconds> timeout) noexcept {
        transaction_statement_timeout_ = timeout;
    }

    asio::awaitable<void> connect() {
        close();
        try {
            co_await open();
        } catch (...) {
            // A half-open connection left behind would hold a server process waiting for its startup packet, which
            // also holds up the server's shutdown: hang up at once.
            close();
            throw;
        }
    }

    asio::awaitable<Result> execute(const std::string& sql, const std::vector<Param>& params) {
        send(sql, params);
        auto result = co_await finish_statement();
        co_return result;
    }

    /// Runs `statements` in one round trip (libpq's pipeline mode) and returns the last one's result. If one fails,
    /// those after it are skipped and its failure is thrown once every result has been read.
    asio::awaitable<Result> execute_pipeline(const std::vector<Statement>& statements) {
        if (PQenterPipelineMode(conn_) == 0) {
            throw failure("cannot enter pipeline mode");
        }
        for (const auto& statement : statements) {
            send(statement.sql, statement.params);
        }
        if (PQpipelineSync(conn_) == 0) {
            throw failure("cannot send the pipeline");
        }
        const auto deadline = statement_deadline();
        co_await flush(deadline);
        std::optional<Error> error;
        Result last(nullptr);
        for (std::size_t index = 0; index < statements.size(); ++index) {
            auto results = co_await read_results(deadline);
            if (!error && results.error) {
                error = std::move(results.error);
            }
            last = std::move(results.last);
        }
        co_await wait_readable_until_idle(deadline);
        const Result sync(PQgetResult(conn_));
        if (PQexitPipelineMode(conn_) == 0) {
            throw failure("cannot leave pipeline mode");
        }
        if (error) {
            throw_statement_error(std::move(*error));
        }
        co_return last;
    }

    asio::awaitable<void> run_script(const std::string& sql) {
        if (PQsendQuery(conn_, sql.c_str()) == 0) {
            throw failure("cannot send the script");
        }
        co_await finish_statement();
    }

    /// Notifications already received, or the first ones to arrive before `deadline`.
    asio::awaitable<std::vector<Notification>> notifications(Clock::time_point deadline) {
        auto received = take_notifications();
        while (received.empty() && Clock::now() < deadline) {
            timer_.expires_at(deadline);
            using Wait = asio::posix::stream_descriptor::wait_type;
            auto readable = [this] { return socket_.async_wait(Wait::wait_read, asio::as_tuple(asio::use_awaitable)); };
            auto expired = [this] { return timer_.async_wait(asio::as_tuple(asio::use_awaitable)); };
            const auto result = co_await (readable() || expired());
            if (result.index() == 1) {
                break;
            }
            if (const auto error = std::get<0>(std::get<0>(result))) {
                broken_ = true;
                throw boost::system::system_error(error);
            }
            if (PQconsumeInput(conn_) == 0) {
                throw failure("connection lost");
            }
            received = take_notifications();
        }
        co_return received;
    }

  private:
    enum class Ready { read, write, either };

    asio::awaitable<void> open() {
        const auto deadline = Clock::now() + settings_.connect_timeout;
        auto parameters = co_await connection_parameters();
        std::vector<const char*> keywords;
        std::vector<const char*> values;
        for (const auto& [keyword, value] : parameters) {
            keywords.push_back(keyword.c_str());
            values.push_back(value.c_str());
        }
        keywords.push_back(nullptr);
        values.push_back(nullptr);
        conn_ = PQconnectStartParams(keywords.data(), values.data(), 0);
        if (conn_ == nullptr) {
            throw std::bad_alloc();
        }
        if (PQstatus(conn_) == CONNECTION_BAD) {
            throw failure("cannot connect");
        }
        // libpq's protocol: start as if PQconnectPoll had asked to wait for writing.
        auto polling = PGRES_POLLING_WRITING;
        while (polling != PGRES_POLLING_OK) {
            if (polling == PGRES_POLLING_FAILED) {
                throw failure("cannot connect");
            }
            track_socket();
            const auto ready = polling == PGRES_POLLING_READING ? Ready::read : Ready::write;
            co_await wait(ready, deadline, "connecting took too long");
            polling = PQconnectPoll(conn_);
        }
        track_socket();
        if (PQsetnonblocking(conn_, 1) != 0) {
            throw failure("cannot switch to non-blocking mode");
        }
        PQsetNoticeProcessor(conn_, log_notice, nullptr);
    }

    /// Hands one statement to libpq (sent with the next flush).
    void send(const std::string& sql, const std::vector<Param>& params) {
        std::vector<const char*> values;
        values.reserve(params.size());
        for (const auto& param : params) {
            // libpq sends a parameter as a C string: a NUL would silently cut it, and the statement would act on a
            // different value than the caller's (a filter naming another type).
            if (param && param->find('\0') != std::string::npos) {
                throw Error(std::string(kNulInText),
                            fmt::format("parameter ${} holds a NUL byte (U+0000), which PostgreSQL text cannot store",
                                        values.size() + 1));
            }
            values.push_back(param ? param->c_str() : nullptr);
        }
        if (PQsendQueryParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(), nullptr,
                              nullptr, 0) == 0) {
            throw failure("cannot send the statement");
        }
    }

    [[nodiscard]] Clock::time_point statement_deadline() const {
        const auto limit = transaction_statement_timeout_.value_or(settings_.statement_timeout);
        return Clock::now() + limit + kClientDeadlineMargin;
    }

    asio::awaitable<void> flush(Clock::time_point deadline) {
        while (true) {
            const int pending = PQflush(conn_);
            if (pending == 0) {
                break;
            }
            if (pending < 0) {
                throw failure("cannot send the statement");
            }
            // libpq may need to read (e.g. a notice) before it can write on: wait for either.
            co_await wait(Ready::either, deadline, "the server did not take the statement in time");
            if (PQconsumeInput(conn_) == 0) {
                throw failure("connection lost");
            }
        }
    }

    asio::awaitable<void> wait_readable_until_idle(Clock::time_point deadline) {
        while (PQisBusy(conn_) != 0) {
            co_await wait(Ready::read, deadline, "the server did not answer in time");
            if (PQconsumeInput(conn_) == 0) {
                throw failure("connection lost");
            }
        }
    }

    struct StatementResults {
        Result last;
        std::optional<Error> error;
    };

    /// The results of one statement, up to libpq's null that ends them: its last result, or its first error.
    asio::awaitable<StatementResults> read_results(Clock::time_point deadline) {
        StatementResults results{Result(nullptr), std::nullopt};
        while (true) {
            co_await wait_readable_until_idle(deadline);
            PGresult* next = PQgetResult(conn_);
            if (next == nullptr) {
                break;
            }
            Result result(next);
            const auto status = PQresultStatus(next);
            if (status == PGRES_FATAL_ERROR || status == PGRES_BAD_RESPONSE || status == PGRES_NONFATAL_ERROR) {
                if (!results.error) {
                    results.error.emplace(server_error(next));
                }
            } else if (status != PGRES_PIPELINE_ABORTED) {
                results.last = std::move(result);
            }
        }
        co_return results;
    }

    asio::awaitable<Result> finish_statement() {
        const auto deadline = statement_deadline();
        co_await flush(deadline);
        auto results = co_await read_results(deadline);
        if (results.error) {
            throw_statement_error(std::move(*results.error));
        }
        co_return std::move(results.last);
    }

    /// Throws a statement's failure; a failure that also ended the session (the server shut down) leaves the
    /// connection broken, so the pool does not hand it out again.
    [[noreturn]] void throw_statement_error(Error error) {
        if (PQstatus(conn_) != CONNECTION_OK) {
            broken_ = true;
        }
        throw std::move(error);
    }

    /// Waits until the socket is ready, or throws once the deadline passes. Anything that interrupts a wait
    /// (the deadline, a cancelled job) leaves the protocol mid-statement, so the connection is not reused.
    asio::awaitable<void> wait(Ready ready, Clock::time_point deadline, std::string_view what) {
        try {
            timer_.expires_at(deadline);
            using Wait = asio::posix::stream_descriptor::wait_type;
            auto readable = [this] { return socket_.async_wait(Wait::wait_read, asio::as_tuple(asio::use_awaitable)); };
            auto writable = [this] {
                return socket_.async_wait(Wait::wait_write, asio::as_tuple(asio::use_awaitable));
            };
            auto expired = [this] { return timer_.async_wait(asio::as_tuple(asio::use_awaitable)); };
            std::size_t winner = 0;
            boost::system::error_code socket_error;
            if (ready == Ready::read) {
                const auto result = co_await (readable() || expired());
                winner = result.index();
                socket_error = winner == 0 ? std::get<0>(std::get<0>(result)) : boost::system::error_code();
            } else if (ready == Ready::write) {
                const auto result = co_await (writable() || expired());
                winner = result.index();
                socket_error = winner == 0 ? std::get<0>(std::get<0>(result)) : boost::system::error_code();
            } else {
                const auto result = co_await (readable() || writable() || expired());
                winner = result.index() == 2 ? 1 : 0;
                if (result.index() == 0) {
                    socket_error = std::get<0>(std::get<0>(result));
                } else if (result.index() == 1) {
                    socket_error = std::get<0>(std::get<1>(result));
                }
            }
            if (socket_error) {
                // Cancelled (the job's deadline, a shutdown) or a failed socket: the statement is abandoned midway.
                throw boost::system::system_error(socket_error);
            }
            if (winner == 1 && Clock::now() >= deadline) {
                broken_ = true;
                throw Error(std::string(kQueryCanceled), std::string(what));
            }
        } catch (const boost::system::system_error&) {
            broken_ = true;
            throw;
        }
    }

    std::vector<Notification> take_notifications() {
        std::vector<Notification> received;
        while (PGnotify* notification = PQnotifies(conn_)) {
            received.push_back({notification->relname, notification->extra});
            PQfreemem(notification);
        }
        return received;
    }

    Error failure(std::string_view what) {
        broken_ = true;
        auto message = fmt::format("{}: {}", what, trimmed(PQerrorMessage(conn_)));
        std::replace(message.begin(), message.end(), '\n', ' ');
        return {std::string(kConnectionFailure), message};
    }

    /// Asio watches a duplicate of libpq's socket, never libpq's descriptor itself. libpq closes its descriptor on
    /// its own when the server hangs up, and the number is then free for another connection's socket: a watch
    /// kept by that number would, when finally dropped, deregister the other connection's socket, whose waits would
    /// then never finish. The duplicate's number stays ours until close(). While connecting, libpq may also open a
    /// new socket (another address, a retry without SSL), which the inode tells apart even under a reused number.
    void track_socket() {
        const int fd = PQsocket(conn_);
        struct stat current {};
        if (fd < 0 || ::fstat(fd, &current) != 0) {
            throw failure("the connection has no socket");
        }
        if (socket_.is_open() && watched_inode_ == current.st_ino) {
            return;
        }
        forget_socket();
        const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (copy < 0) {
            throw failure("cannot duplicate the socket");
        }
        socket_.assign(copy);
        watched_inode_ = current.st_ino;
    }

    void forget_socket() noexcept {
        if (socket_.is_open()) {
            boost::system::error_code ignored;
            socket_.close(ignored);  // our duplicate; libpq's descriptor is libpq's to close
        }
    }

    void close() noexcept {
        forget_socket();
        if (conn_ != nullptr) {
            PQfinish(conn_);
            conn_ = nullptr;
        }
        broken_ = false;
    }

    /// The URL's parameters, completed: an address resolved here (libpq would resolve a host name with a
    /// blocking call), the statement timeout, the application name.
    asio::awaitable<std::vector<std::pair<std::string, std::string>>> connection_parameters() {
        char* parse_error = nullptr;
        PQconninfoOption* options = PQconninfoParse(settings_.url.c_str(), &parse_error);
        if (options == nullptr) {
            std::string message = parse_error == nullptr ? "out of memory" : trimmed(parse_error);
            PQfreemem(parse_error);
            throw std::invalid_argument(
                fmt::format("invalid PostgreSQL URL {}: {}", redacted_url(settings_.url), message));
        }
        std::vector<std::pair<std::string, std::string>> parameters;
        for (auto* option = options; option->keyword != nullptr; ++option) {
            if (option->val != nullptr && *option->val != '\0') {
                parameters.emplace_back(option->keyword, option->val);
            }
        }
        PQconninfoFree(options);
        auto find = [&](std::string_view keyword) -> std::string* {
            for (auto& [key, value] : parameters) {
                if (key == keyword) {
                    return &value;
                }
            }
            return nullptr;
        };
        const auto* host = find("host");
        if (host != nullptr && find("hostaddr") == nullptr && !host->starts_with('/') &&
            host->find(',') == std::string::npos && !is_numeric_address(*host)) {
            const auto* port = find("port");
            auto [error, endpoints] = co_await resolver_.async_resolve(
                *host, port == nullptr ? std::string("5432") : *port, asio::as_tuple(asio::use_awaitable));
            if (error || endpoints.empty()) {
                throw Error(std::string(kConnectionFailure),
                            fmt::format("cannot resolve {}: {}", *host, error ? error.message() : "no address"));
            }
            parameters.emplace_back("hostaddr", endpoints.begin()->endpoint().address().to_string());
        }
        // A statement whose caller gave up (a cancelled job, the client deadline) loses its connection, which is
        // closed at once; the server checks for a vanished client every second and stops the statement there
        // instead of running on, holding its locks, until the statement timeout.
        // Keepalives on the server's side of the connection: a client whose host or network vanished without a
        // FIN (no crash to close the socket) is noticed within about 11 s instead of the kernel's two hours, and
        // what its session held (row locks, the scheduler's advisory lock on leadership) is released.
        const auto timeout = fmt::format(
            "-c statement_timeout={} -c client_connection_check_interval=1000 -c tcp_keepalives_idle=5 "
            "-c tcp_keepalives_interval=2 -c tcp_keepalives_count=3",
            settings_.statement_timeout.count());
        if (auto* existing = find("options")) {
            *existing += " " + timeout;
        } else {
            parameters.emplace_back("options", timeout);
        }
        if (find("application_name") == nullptr) {
            parameters.emplace_back("application_name", settings_.application_name);
        }
        // The same on our side, so a session whose server vanished fails instead of waiting on a dead socket.
        for (const auto& [keyword, value] :
             {std::pair{"keepalives", "1"}, std::pair{"keepalives_idle", "5"}, std::pair{"keepalives_interval", "2"},
              std::pair{"keepalives_count", "3"}}) {
            if (find(keyword) == nullptr) {
                parameters.emplace_back(keyword, value);
            }
        }
        // GSSAPI negotiation can call into Kerberos libraries that block.
        if (find("gssencmode") == nullptr) {
            parameters.emplace_back("gssencmode", "disable");
        }
        co_return parameters;
    }

    const Settings& settings_;
    std::optional<std::chrono::milliseconds> transaction_statement_timeout_;
    PGconn* conn_ = nullptr;
    bool broken_ = false;
    asio::posix::stream_descriptor socket_;
    ino_t watched_inode_ = 0;
    asio::steady_timer timer_;
    asio::ip::tcp::resolver resolver_;
};

Lease::Lease(Pool& pool, std::unique_ptr<Connection> connection) noexcept
    : pool_(&pool), connection_(std::move(connection)) {}

Lease::~Lease() {
    if (connection_) {
        pool_->give_back(std::move(connection_));
    }
}

Lease::Lease(Lease&& other) noexcept : pool_(other.pool_), connection_(std::move(other.connection_)) {}

asio::awaitable<Result> Transaction::execute(std::string sql, std::vector<Param> params) {
    if (!open_) {
        throw std::logic_error("statement on a finished transaction");
    }
    if (deferred_.empty()) {
        auto result = co_await lease_.connection().execute(sql, params);
        co_return result;
    }
    auto statements = std::exchange(deferred_, {});
    statements.push_back({std::move(sql), std::move(params)});
    auto result = co_await lease_.connection().execute_pipeline(statements);
    co_return result;
}

void Transaction::defer(std::string sql, std::vector<Param> params) {
    deferred_.push_back({std::move(sql), std::move(params)});
}

bool Transaction::failed() const noexcept {
    return lease_.connection().transaction_failed();
}

asio::awaitable<void> Transaction::run_script(std::string sql) {
    if (!open_) {
        throw std::logic_error("script on a finished transaction");
    }
    if (!deferred_.empty()) {
        // A script goes as a simple query, which a pipeline cannot carry: the deferred statements go first.
        const auto statements = std::exchange(deferred_, {});
        co_await lease_.connection().execute_pipeline(statements);
    }
    co_await lease_.connection().run_script(sql);
}

asio::awaitable<void> Transaction::set_statement_timeout(std::chrono::milliseconds timeout) {
    std::string sql("SELECT set_config('statement_timeout', $1, true)");
    std::vector<Param> params{fmt::format("{}ms", timeout.count())};
    co_await execute(std::move(sql), std::move(params));
    lease_.connection().set_transaction_statement_timeout(timeout);
}

asio::awaitable<void> Transaction::commit() {
    // A statement that failed inside the transaction aborted it, and PostgreSQL answers a COMMIT of an aborted
    // transaction with a rollback, not an error: a caller that caught the failure must not take that for success.
    if (deferred_.empty() && lease_.connection().transaction_failed()) {
        co_await rollback();
        throw Error("25P02", "the transaction was rolled back: a statement in it had failed");
    }
    std::string commit_sql("COMMIT");  // named: no temporaries inside co_await for g++ 12
    std::vector<Param> no_params;
    const auto result = co_await execute(std::move(commit_sql), std::move(no_params));
    open_ = false;
    lease_.connection().set_transaction_statement_timeout(std::nullopt);
    if (result.command_status() != "COMMIT") {
        throw Error("25P02",
                    fmt::format("COMMIT answered '{}': the transaction was rolled back", result.command_status()));
    }
}

asio::awaitable<void> Transaction::rollback() {
    deferred_.clear();
    std::string rollback_sql("ROLLBACK");
    std::vector<Param> no_params;
    co_await execute(std::move(rollback_sql), std::move(no_params));
    open_ = false;
    lease_.connection().set_transaction_statement_timeout(std::nullopt);
}

class Pool::Impl {
  public:
    Impl(asio::any_io_executor executor, Settings settings)
        : executor_(std::move(executor)), settings_(std::move(settings)) {
        if (settings_.pool_size == 0) {
            throw std::invalid_argument("the PostgreSQL pool needs at least one connection");
        }
        for (std::size_t i = 0; i < settings_.pool_size; ++i) {
            idle_.push_back(std::make_unique<Connection>(executor_, settings_));
        }
    }

    struct Waiter {
        explicit Waiter(const asio::any_io_executor& executor) : wake(executor, 1) {}
        asio::experimental::concurrent_channel<void(boost::system::error_code)> wake;
        std::unique_ptr<Connection> handed;  ///< set under the pool's mutex
    };

    asio::any_io_executor executor_;
    Settings settings_;
    mutable std::mutex mutex_;
    std::vector<std::unique_ptr<Connection>> idle_;
    std::deque<std::shared_ptr<Waiter>> waiters_;
};

Pool::Pool(asio::any_io_executor executor, Settings settings)
    : impl_(std::make_shared<Impl>(std::move(executor), std::move(settings))) {}

Pool::~Pool() = default;

const Settings& Pool::settings() const noexcept {
    return impl_->settings_;
}

std::size_t Pool::idle() const {
    std::lock_guard lock(impl_->mutex_);
    return impl_->idle_.size();
}

std::size_t Pool::waiting() const {
    std::lock_guard lock(impl_->mutex_);
    return impl_->waiters_.size();
}

void Pool::give_back(std::unique_ptr<Connection> connection) noexcept {
    if (!connection->usable()) {
        connection->discard();
    }
    // A transaction left open is rolled back before the next use, and its settings go with it.
    connection->set_transaction_statement_timeout(std::nullopt);
    std::lock_guard lock(impl_->mutex_);
    if (impl_->waiters_.empty()) {
        impl_->idle_.push_back(std::move(connection));
        return;
    }
    auto waiter = std::move(impl_->waiters_.front());
    impl_->waiters_.pop_front();
    waiter->handed = std::move(connection);
    // The wake-up may be lost to a waiter that is timing out at this moment; it finds `handed` set either way.
    (void)waiter->wake.try_send(boost::system::error_code{});
}

asio::awaitable<Lease> Pool::acquire() {
    std::unique_ptr<Connection> connection;
    std::shared_ptr<Impl::Waiter> waiter;
    {
        std::lock_guard lock(impl_->mutex_);
        if (!impl_->idle_.empty()) {
            connection = std::move(impl_->idle_.back());
            impl_->idle_.pop_back();
        } else {
            waiter = std::make_shared<Impl::Waiter>(impl_->executor_);
            impl_->waiters_.push_back(waiter);
        }
    }
    if (waiter) {
        asio::steady_timer timeout(impl_->executor_, impl_->settings_.acquire_timeout);
        co_await (waiter->wake.async_receive(asio::as_tuple(asio::use_awaitable)) ||
                  timeout.async_wait(asio::as_tuple(asio::use_awaitable)));
        std::lock_guard lock(impl_->mutex_);
        if (waiter->handed) {
            connection = std::move(waiter->handed);
        } else {
            std::erase(impl_->waiters_, waiter);
        }
    }
    if (!connection) {
        throw Error(std::string(kTooManyConnections),
                    fmt::format("no PostgreSQL connection free within {} ms (pool of {})",
                                impl_->settings_.acquire_timeout.count(), impl_->settings_.pool_size));
    }
    Lease lease(*this, std::move(connection));
    auto& leased = lease.connection();
    if (leased.usable() && leased.in_transaction()) {
        // Its last holder left a transaction open (an exception, a cancelled job).
        try {
            const std::string rollback_sql("ROLLBACK");
            const std::vector<Param> no_params;
            co_await leased.execute(rollback_sql, no_params);
        } catch (const Error& e) {
            spdlog::debug("postgres: rollback of an abandoned transaction failed ({}); reconnecting", e.what());
        }
    }
    if (!leased.usable()) {
        co_await leased.connect();
    }
    co_return lease;
}

asio::awaitable<Result> Pool::execute(std::string sql, std::vector<Param> params) {
    auto lease = co_await acquire();
    auto result = co_await lease.connection().execute(sql, params);
    co_return result;
}

asio::awaitable<Transaction> Pool::begin(std::string_view statement) {
    const std::string begin_statement(statement);
    const std::vector<Param> no_params;
    // Every idle connection may have died with a server restart; each is replaced in turn.
    for (std::size_t attempt = 0;; ++attempt) {
        auto lease = co_await acquire();
        try {
            co_await lease.connection().execute(begin_statement, no_params);
            Transaction transaction(std::move(lease));
            co_return transaction;
        } catch (const Error& e) {
            if (!e.sqlstate().starts_with("08") || attempt >= impl_->settings_.pool_size) {
                throw;
            }
            spdlog::debug("postgres: a pooled connection was lost ({}); trying a fresh one", e.what());
        }
    }
}

Session::Session(asio::any_io_executor executor, Settings settings)
    : settings_(std::move(settings)), connection_(std::make_unique<Connection>(std::move(executor), settings_)) {}

Session::~Session() = default;

asio::awaitable<void> Session::connect() {
    co_await connection_->connect();
}

bool Session::connected() const noexcept {
    return connection_->usable();
}

void Session::disconnect() noexcept {
    connection_->discard();
}

asio::awaitable<Result> Session::execute(std::string sql, std::vector<Param> params) {
    if (!connection_->usable()) {
        throw Error(std::string(kConnectionFailure), "the session is not connected");
    }
    auto result = co_await connection_->execute(sql, params);
    co_return result;
}

asio::awaitable<std::vector<Notification>> Session::notifications(Clock::time_point deadline) {
    if (!connection_->usable()) {
        throw Error(std::string(kConnectionFailure), "the session is not connected");
    }
    auto received = co_await connection_->notifications(deadline);
    co_return received;
}

namespace {

template <typename Text>
std::string quoted_array(std::span<const Text> values) {
    std::string literal = "{";
    for (const auto& value : values) {
        if (literal.size() > 1) {
            literal += ',';
        }
        literal += '"';
        for (const char c : std::string_view(value)) {
            if (c == '"' || c == '\\') {
                literal += '\\';
            }
            literal += c;
        }
        literal += '"';
    }
    literal += '}';
    return literal;
}

}  // namespace

std::string text_array(std::span<const std::string_view> values) {
    return quoted_array(values);
}

std::string text_array(std::span<const std::string> values) {
    return quoted_array(values);
}

std::string bytea_literal(std::string_view bytes) {
    std::string out = "\\x";
    out.reserve(2 + 2 * bytes.size());
    for (const char c : bytes) {
        fmt::format_to(std::back_inserter(out), "{:02x}", static_cast<unsigned char>(c));
    }
    return out;
}

std::string utc_text(std::string_view column) {
    return fmt::format(R"(to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))", column);
}

}  // namespace conveyor::pg
