#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "fmt/format.h"

struct pg_result;
struct pg_conn;

/// PostgreSQL client on libpq's asynchronous API, driven by Asio: the socket's readiness is awaited, never
/// blocked on, so queries run on the same threads as the jobs that issue them. Values travel as text parameters
/// ($1, $2, …); SQL is never assembled from data.
namespace conveyor::pg {

struct Settings {
    /// libpq connection URL or key=value string (CONVEYOR_PG_URL).
    std::string url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    /// Connections at most; a caller beyond that waits in line for one.
    std::size_t pool_size = 10;
    /// Server-side limit on every statement (SET statement_timeout); the client gives up a little later.
    std::chrono::milliseconds statement_timeout{10'000};
    std::chrono::milliseconds connect_timeout{5'000};
    /// How long a caller waits for a free connection before failing.
    std::chrono::milliseconds acquire_timeout{10'000};
    /// Shown in pg_stat_activity.
    std::string application_name = "conveyor";
};

/// A failed statement or connection. `sqlstate` is PostgreSQL's code ("40P01" …) or, for failures on our
/// side, "08006" (connection lost or refused), "57014" (the client-side deadline passed) and "22021" (a parameter
/// holds a NUL byte, refused before anything is sent).
class Error : public std::runtime_error {
  public:
    Error(std::string sqlstate, const std::string& message);
    [[nodiscard]] const std::string& sqlstate() const noexcept { return sqlstate_; }
    /// The message alone, without the code: e.g. what a RAISE in a function of ours says to the caller.
    [[nodiscard]] const std::string& message() const noexcept { return message_; }
    /// Whether running the same work again can succeed: lost connections, serialization failures (40001),
    /// deadlocks (40P01), lock timeouts (55P03), cancelled statements, server shutdown, resource exhaustion.
    [[nodiscard]] bool transient() const noexcept;

  private:
    std::string sqlstate_;
    std::string message_;
};

/// The rows of a statement, owned; values are text as PostgreSQL prints them.
class Result {
  public:
    Result() noexcept = default;
    explicit Result(pg_result* result) noexcept;
    ~Result();
    Result(Result&& other) noexcept;
    Result& operator=(Result&& other) noexcept;
    Result(const Result&) = delete;
    Result& operator=(const Result&) = delete;

    [[nodiscard]] int rows() const noexcept;
    [[nodiscard]] int columns() const noexcept;
    [[nodiscard]] bool is_null(int row, int column) const noexcept;
    [[nodiscard]] std::string_view text(int row, int column) const noexcept;
    /// Throws Error if the value is not an integer.
    [[nodiscard]] std::int64_t integer(int row, int column) const;
    /// The command tag, e.g. "INSERT 0 1" or "COMMIT".
    [[nodiscard]] std::string_view command_status() const noexcept;
    /// Rows inserted, updated or deleted.
    [[nodiscard]] std::int64_t affected() const noexcept;

  private:
    pg_result* result_ = nullptr;
};

/// A statement parameter: text, or NULL.
using Param = std::optional<std::string>;

template <typename T>
Param to_param(const T& value) {
    if constexpr (std::is_same_v<T, std::nullopt_t>) {
        return std::nullopt;
    } else if constexpr (std::is_same_v<T, bool>) {
        return std::string(value ? "true" : "false");
    } else if constexpr (std::is_arithmetic_v<T>) {
        return fmt::format("{}", value);
    } else if constexpr (requires {
                             value.has_value();
                             *value;
                         }) {
        return value ? to_param(*value) : std::nullopt;
    } else {
        return std::string(std::string_view(value));
    }
}

/// A statement with its parameters, queued to go with others in one round trip.
struct Statement {
    std::string sql;
    std::vector<Param> params;
};

class Connection;
class Pool;

/// A connection taken from the pool, given back when the lease ends. A lease that ends inside a transaction
/// hands its connection back for a rollback before anyone else uses it.
class Lease {
  public:
    Lease(Pool& pool, std::unique_ptr<Connection> connection) noexcept;
    ~Lease();
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&&) = delete;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

    [[nodiscard]] Connection& connection() const noexcept { return *connection_; }

  private:
    Pool* pool_;
    std::unique_ptr<Connection> connection_;
};

/// A transaction bound to the coroutine that began it. Commit it explicitly; one that goes out of scope
/// otherwise (an exception, an early return) is rolled back.
class Transaction {
  public:
    explicit Transaction(Lease lease) noexcept : lease_(std::move(lease)) {}
    Transaction(Transaction&&) noexcept = default;

    template <typename... Args>
    boost::asio::awaitable<Result> query(std::string_view sql, const Args&... args) {
        return execute(std::string(sql), {to_param(args)...});
    }
    /// The same with parameters already converted, for callers that build them at run time.
    boost::asio::awaitable<Result> query_params(std::string sql, std::vector<Param> params) {
        return execute(std::move(sql), std::move(params));
    }
    /// Runs SQL that has no parameters and may hold several statements (migrations).
    boost::asio::awaitable<void> run_script(std::string sql);
    /// Raises (or lowers) statement_timeout for the rest of this transaction, for work bigger than a job's
    /// statements (a projection rebuild); the client-side deadline follows it.
    boost::asio::awaitable<void> set_statement_timeout(std::chrono::milliseconds timeout);
    /// Throws Error 25P02 if the transaction was aborted by a failed statement (it is rolled back instead).
    boost::asio::awaitable<void> commit();
    boost::asio::awaitable<void> rollback();

    /// Queues a statement to be sent with the next one, in the same round trip (libpq's pipeline mode): for
    /// statements whose result nobody reads, such as SAVEPOINT and RELEASE. If it fails, the statement it went with
    /// is skipped and throws its failure.
    void defer(std::string sql, std::vector<Param> params = {});
    /// Whether a failed statement aborted the transaction: only a rollback (to a savepoint, or whole) is accepted
    /// until then. Statements still deferred are not counted.
    [[nodiscard]] bool failed() const noexcept;

  private:
    boost::asio::awaitable<Result> execute(std::string sql, std::vector<Param> params);

    Lease lease_;
    bool open_ = true;
    std::vector<Statement> deferred_;
};

/// A bounded set of connections shared by coroutines on any thread. Connections open lazily, and one found
/// broken (the server restarted) is replaced on its next use.
class Pool {
  public:
    Pool(boost::asio::any_io_executor executor, Settings settings);
    ~Pool();
    Pool(const Pool&) = delete;
    Pool& operator=(const Pool&) = delete;

    /// One statement in its own transaction.
    template <typename... Args>
    boost::asio::awaitable<Result> query(std::string_view sql, const Args&... args) {
        return execute(std::string(sql), {to_param(args)...});
    }

    /// The same with parameters already converted, for callers that build them at run time.
    boost::asio::awaitable<Result> query_params(std::string sql, std::vector<Param> params) {
        return execute(std::move(sql), std::move(params));
    }

    /// Begins a transaction ("BEGIN", or e.g. "BEGIN ISOLATION LEVEL SERIALIZABLE"). A connection that turns
    /// out to be dead is replaced and the BEGIN sent again: nothing has happened on it yet.
    boost::asio::awaitable<Transaction> begin(std::string_view statement = "BEGIN");

    /// Waits for a free connection (at most acquire_timeout) and opens it if needed.
    boost::asio::awaitable<Lease> acquire();

    [[nodiscard]] const Settings& settings() const noexcept;
    /// Connections not leased out, and leases waited for right now.
    [[nodiscard]] std::size_t idle() const;
    [[nodiscard]] std::size_t waiting() const;

  private:
    friend class Lease;
    void give_back(std::unique_ptr<Connection> connection) noexcept;
    boost::asio::awaitable<Result> execute(std::string sql, std::vector<Param> params);

    class Impl;
    std::shared_ptr<Impl> impl_;
};

/// A NOTIFY received on a channel this session listens on.
struct Notification {
    std::string channel;
    std::string payload;
};

/// A connection of its own, outside the pool, for state that lives as long as a server session: LISTEN
/// subscriptions and session-level advisory locks (the server releases those when the connection ends, however the
/// process ends). Used by one coroutine at a time. A statement that fails on a lost connection leaves the session
/// disconnected; connect() opens a new one, and the caller must listen or lock again.
class Session {
  public:
    Session(boost::asio::any_io_executor executor, Settings settings);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    boost::asio::awaitable<void> connect();
    [[nodiscard]] bool connected() const noexcept;

    template <typename... Args>
    boost::asio::awaitable<Result> query(std::string_view sql, const Args&... args) {
        return execute(std::string(sql), {to_param(args)...});
    }

    /// Notifications that arrive before `deadline` (all of those already received, without waiting, if there are
    /// any); none if the deadline passes first. Throws Error if the connection is lost.
    boost::asio::awaitable<std::vector<Notification>> notifications(std::chrono::steady_clock::time_point deadline);

    /// Closes the connection now (its locks and subscriptions end with it).
    void disconnect() noexcept;

  private:
    boost::asio::awaitable<Result> execute(std::string sql, std::vector<Param> params);

    Settings settings_;
    std::unique_ptr<Connection> connection_;
};

/// A PostgreSQL array literal of text values (every element quoted), for one parameter such as `$1::text[]`:
/// a batch goes to the server in one statement (`unnest`) instead of one statement per row.
[[nodiscard]] std::string text_array(std::span<const std::string_view> values);
[[nodiscard]] std::string text_array(std::span<const std::string> values);

/// SQL printing the timestamptz expression `column` as RFC 3339 UTC with milliseconds ("2026-12-07T03:45:53.642Z"),
/// as every answer of the API and the CLI shows times; NULL stays NULL.
[[nodiscard]] std::string utc_text(std::string_view column);

/// bytea input syntax (hex) for `bytes`, whatever they hold: a parameter such as `$1::bytea`, or an element of a
/// text_array() cast to bytea[].
[[nodiscard]] std::string bytea_literal(std::string_view bytes);

}  // namespace conveyor::pg
