#include "conveyor/core/pg.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_future.hpp>

#include "conveyor/core/migrations.hpp"
#include "test_support.hpp"

namespace conveyor::testing {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

/// Each test gets a pool on the real database and runs its coroutines to completion.
class PgTest : public ::testing::Test {
  protected:
    pg::Pool make_pool(std::size_t size = 4, std::chrono::milliseconds statement_timeout = 5s,
                       std::chrono::milliseconds acquire_timeout = 5s) {
        pg::Settings settings;
        settings.url = pg_url();
        settings.pool_size = size;
        settings.statement_timeout = statement_timeout;
        settings.acquire_timeout = acquire_timeout;
        return {io_.get_executor(), settings};
    }

    template <typename T>
    T run(asio::awaitable<T> work) {
        auto result = asio::co_spawn(io_, std::move(work), asio::use_future);
        io_.restart();
        io_.run();
        return result.get();
    }

    struct Failure {
        std::string sqlstate;
        bool transient = false;
        std::string what;
    };

    /// How a statement fails; sqlstate "00000" if it succeeds.
    Failure error_of(pg::Pool& pool, const std::string& sql) {
        return run([&pool, sql]() -> asio::awaitable<Failure> {
            try {
                co_await pool.query(sql);
            } catch (const pg::Error& e) {
                co_return Failure{e.sqlstate(), e.transient(), e.what()};
            }
            co_return Failure{"00000", false, "the statement succeeded"};
        }());
    }

    /// Runs two coroutines side by side to the end; what each reported, sorted.
    std::vector<std::string> race(asio::awaitable<std::string> first, asio::awaitable<std::string> second) {
        std::vector<std::string> outcomes;
        for (auto* contender : {&first, &second}) {
            asio::co_spawn(io_, std::move(*contender), [&outcomes](const std::exception_ptr&, std::string outcome) {
                outcomes.push_back(std::move(outcome));
            });
        }
        io_.restart();
        io_.run();
        std::sort(outcomes.begin(), outcomes.end());
        return outcomes;
    }

    /// "40P01 transient": how a test reports a pg::Error.
    static std::string describe(const pg::Error& error) {
        return error.sqlstate() + (error.transient() ? " transient" : " permanent");
    }

    asio::io_context io_;
};

TEST_F(PgTest, RunsParameterisedQueriesWithNullsAndIntegers) {
    auto pool = make_pool();
    const auto result = run([&]() -> asio::awaitable<pg::Result> {
        auto rows = co_await pool.query("SELECT $1::text, $2::bigint, $3::text IS NULL, $4::boolean",
                                        std::string_view("it's \"quoted\"; DROP TABLE x"), std::int64_t{-42},
                                        std::nullopt, true);
        co_return rows;
    }());
    ASSERT_EQ(result.rows(), 1);
    EXPECT_EQ(result.text(0, 0), "it's \"quoted\"; DROP TABLE x");
    EXPECT_EQ(result.integer(0, 1), -42);
    EXPECT_EQ(result.text(0, 2), "t");
    EXPECT_EQ(result.text(0, 3), "t");
}

TEST_F(PgTest, APoolNeverOpensMoreConnectionsThanItsSizeAndQueuesTheRest) {
    auto pool = make_pool(2);
    std::atomic<int> running{0};
    std::atomic<int> most{0};
    std::atomic<int> done{0};
    std::size_t most_waiting = 0;
    for (int i = 0; i < 6; ++i) {
        asio::co_spawn(
            io_,
            [&]() -> asio::awaitable<void> {
                auto lease = co_await pool.acquire();
                const int now = ++running;
                most = std::max(most.load(), now);
                most_waiting = std::max(most_waiting, pool.waiting());
                auto transaction = pg::Transaction(std::move(lease));
                co_await transaction.query("SELECT pg_sleep(0.1)");
                --running;
                ++done;
            },
            asio::detached);
    }
    io_.run();
    EXPECT_EQ(done, 6);
    EXPECT_EQ(most, 2);
    EXPECT_GE(most_waiting, 3U);
    EXPECT_EQ(pool.idle(), 2U);
}

TEST_F(PgTest, AWaitForAConnectionGivesUpAfterTheAcquireTimeout) {
    auto pool = make_pool(1, 5s, 200ms);
    const auto error = run([&]() -> asio::awaitable<std::string> {
        auto held = co_await pool.acquire();
        try {
            co_await pool.acquire();
        } catch (const pg::Error& e) {
            co_return e.sqlstate();
        }
        co_return std::string("acquired");
    }());
    EXPECT_EQ(error, "53300");
    EXPECT_EQ(pool.waiting(), 0U);
    EXPECT_EQ(pool.idle(), 1U);
}

TEST_F(PgTest, TheStatementTimeoutCancelsASlowStatementAsATransientError) {
    auto pool = make_pool(1, 300ms);
    const auto error = error_of(pool, "SELECT pg_sleep(5)");
    EXPECT_EQ(error.sqlstate, "57014") << error.what;
    EXPECT_TRUE(error.transient);
    // The connection is still good for the next statement.
    EXPECT_EQ(run(pool.query("SELECT 1")).integer(0, 0), 1);
}

TEST_F(PgTest, AStatementWhoseCallerGaveUpStopsOnTheServer) {
    auto pool = make_pool(1, 60s);
    asio::cancellation_signal give_up;
    asio::co_spawn(
        io_, [&]() -> asio::awaitable<void> { co_await pool.query("SELECT pg_sleep(30) /* abandoned */"); },
        asio::bind_cancellation_slot(give_up.slot(), asio::detached));
    asio::steady_timer later(io_, 300ms);
    later.async_wait([&](boost::system::error_code) { give_up.emit(asio::cancellation_type::terminal); });
    io_.restart();
    io_.run();
    Database observer;
    const auto still_running = [&] {
        return observer.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%/* abandoned */%' "
            "AND pid <> pg_backend_pid()");
    };
    EXPECT_TRUE(eventually([&] { return still_running() == 0; }, 5s)) << "the server kept running it";
}

TEST_F(PgTest, ATransactionLeftWithoutCommitIsRolledBack) {
    auto pool = make_pool(1);
    run([&]() -> asio::awaitable<void> {
        co_await pool.query("CREATE TABLE IF NOT EXISTS pg_test_rollback (id text PRIMARY KEY)");
        co_await pool.query("TRUNCATE pg_test_rollback");
        {
            auto transaction = co_await pool.begin();
            co_await transaction.query("INSERT INTO pg_test_rollback VALUES ($1)", std::string_view("lost"));
        }
        auto transaction = co_await pool.begin();
        co_await transaction.query("INSERT INTO pg_test_rollback VALUES ($1)", std::string_view("kept"));
        co_await transaction.commit();
    }());
    const auto rows = run(pool.query("SELECT id FROM pg_test_rollback ORDER BY id"));
    ASSERT_EQ(rows.rows(), 1);
    EXPECT_EQ(rows.text(0, 0), "kept");
}

TEST_F(PgTest, CommittingATransactionThatAStatementAbortedFailsInsteadOfLookingLikeSuccess) {
    auto pool = make_pool(1);
    const auto outcome = run([&]() -> asio::awaitable<std::string> {
        co_await pool.query("CREATE TABLE IF NOT EXISTS pg_test_rollback (id text PRIMARY KEY)");
        co_await pool.query("TRUNCATE pg_test_rollback");
        auto transaction = co_await pool.begin();
        co_await transaction.query("INSERT INTO pg_test_rollback VALUES ($1)", std::string_view("written"));
        try {
            co_await transaction.query("SELECT 1/0");
        } catch (const pg::Error&) {
            // A handler that swallows the failure and reports success.
        }
        try {
            co_await transaction.commit();
        } catch (const pg::Error& e) {
            co_return e.sqlstate();
        }
        co_return std::string("committed");
    }());
    EXPECT_EQ(outcome, "25P02");
    EXPECT_EQ(run(pool.query("SELECT count(*) FROM pg_test_rollback")).integer(0, 0), 0);
}

/// Deferred statements travel with the next one in one round trip (pipeline mode): their effects land in order,
/// and a failing one fails the statement it went with, which is skipped.
TEST_F(PgTest, DeferredStatementsGoWithTheNextOneAndTheirFailureIsItsFailure) {
    auto pool = make_pool(1);
    const auto outcome = run([&]() -> asio::awaitable<std::vector<std::string>> {
        std::vector<std::string> seen;
        co_await pool.query("CREATE TABLE IF NOT EXISTS pg_test_pipeline (id text PRIMARY KEY)");
        co_await pool.query("TRUNCATE pg_test_pipeline");
        auto transaction = co_await pool.begin();
        transaction.defer("SAVEPOINT first");
        transaction.defer("INSERT INTO pg_test_pipeline VALUES ($1)", {std::string("kept")});
        const auto counted = co_await transaction.query("SELECT count(*) FROM pg_test_pipeline");
        seen.push_back(std::string(counted.text(0, 0)));
        transaction.defer("SAVEPOINT second");
        transaction.defer("INSERT INTO pg_test_pipeline VALUES ($1)", {std::string("kept")});  // a duplicate key
        try {
            co_await transaction.query("INSERT INTO pg_test_pipeline VALUES ('skipped')");
            seen.emplace_back("no failure");
        } catch (const pg::Error& e) {
            seen.push_back(e.sqlstate());
        }
        seen.emplace_back(transaction.failed() ? "failed" : "healthy");
        transaction.defer("ROLLBACK TO SAVEPOINT second");
        transaction.defer("RELEASE SAVEPOINT second");
        const auto after = co_await transaction.query("SELECT string_agg(id, ',') FROM pg_test_pipeline");
        seen.push_back(std::string(after.text(0, 0)));
        seen.emplace_back(transaction.failed() ? "failed" : "healthy");
        transaction.defer("RELEASE SAVEPOINT first");
        co_await transaction.commit();
        co_return seen;
    }());
    EXPECT_EQ(outcome, (std::vector<std::string>{"1", "23505", "failed", "kept", "healthy"}));
    EXPECT_EQ(run(pool.query("SELECT string_agg(id, ',') FROM pg_test_pipeline")).text(0, 0), "kept");
}

TEST_F(PgTest, ServerErrorsCarryTheirSqlstateAndOnlyRetryableOnesAreTransient) {
    auto pool = make_pool(1);
    const auto syntax = error_of(pool, "SELEC 1");
    EXPECT_EQ(syntax.sqlstate, "42601");
    EXPECT_FALSE(syntax.transient);
    const auto division = error_of(pool, "SELECT 1/0");
    EXPECT_EQ(division.sqlstate, "22012");
    EXPECT_FALSE(division.transient);
}

/// Two transactions lock two rows in opposite orders: PostgreSQL aborts one of them with 40P01.
TEST_F(PgTest, ARealDeadlockIsReportedAsATransientError) {
    auto pool = make_pool(2);
    run(pool.query("CREATE TABLE IF NOT EXISTS pg_test_locks (id int PRIMARY KEY, n int NOT NULL)"));
    run(pool.query("INSERT INTO pg_test_locks VALUES (1, 0), (2, 0) ON CONFLICT DO NOTHING"));
    auto lock_both = [&](int first, int second) -> asio::awaitable<std::string> {
        try {
            auto transaction = co_await pool.begin();
            co_await transaction.query("UPDATE pg_test_locks SET n = n + 1 WHERE id = $1", first);
            asio::steady_timer pause(co_await asio::this_coro::executor, 200ms);
            co_await pause.async_wait(asio::use_awaitable);
            co_await transaction.query("UPDATE pg_test_locks SET n = n + 1 WHERE id = $1", second);
            co_await transaction.commit();
        } catch (const pg::Error& e) {
            co_return describe(e);
        }
        co_return std::string("committed");
    };
    const auto outcomes = race(lock_both(1, 2), lock_both(2, 1));
    EXPECT_EQ(outcomes, (std::vector<std::string>{"40P01 transient", "committed"}));
}

/// Two serializable transactions read what the other writes: one of them must fail with 40001.
TEST_F(PgTest, ARealSerializationFailureIsReportedAsATransientError) {
    auto pool = make_pool(2);
    run(pool.query("CREATE TABLE IF NOT EXISTS pg_test_serial (id int PRIMARY KEY, n int NOT NULL)"));
    run(pool.query("INSERT INTO pg_test_serial VALUES (1, 0) ON CONFLICT DO NOTHING"));
    auto increment = [&]() -> asio::awaitable<std::string> {
        try {
            auto transaction = co_await pool.begin("BEGIN ISOLATION LEVEL SERIALIZABLE");
            const auto read = co_await transaction.query("SELECT n FROM pg_test_serial WHERE id = 1");
            asio::steady_timer pause(co_await asio::this_coro::executor, 200ms);
            co_await pause.async_wait(asio::use_awaitable);
            co_await transaction.query("UPDATE pg_test_serial SET n = $1 WHERE id = 1", read.integer(0, 0) + 1);
            co_await transaction.commit();
        } catch (const pg::Error& e) {
            co_return describe(e);
        }
        co_return std::string("committed");
    };
    const auto outcomes = race(increment(), increment());
    EXPECT_EQ(outcomes, (std::vector<std::string>{"40001 transient", "committed"}));
}

TEST_F(PgTest, ALockTimeoutIsReportedAsATransientError) {
    auto pool = make_pool(2);
    run(pool.query("CREATE TABLE IF NOT EXISTS pg_test_locks (id int PRIMARY KEY, n int NOT NULL)"));
    run(pool.query("INSERT INTO pg_test_locks VALUES (1, 0) ON CONFLICT DO NOTHING"));
    const auto sqlstate = run([&]() -> asio::awaitable<std::string> {
        auto holder = co_await pool.begin();
        co_await holder.query("SELECT n FROM pg_test_locks WHERE id = 1 FOR UPDATE");
        auto waiter = co_await pool.begin();
        co_await waiter.query("SET LOCAL lock_timeout = '100ms'");
        try {
            co_await waiter.query("UPDATE pg_test_locks SET n = n + 1 WHERE id = 1");
        } catch (const pg::Error& e) {
            co_return describe(e);
        }
        co_return std::string("updated");
    }());
    EXPECT_EQ(sqlstate, "55P03 transient");
}

TEST_F(PgTest, PooledConnectionsRecoverAfterTheServerRestarts) {
    auto pool = make_pool(3);
    // Open every pooled connection, so all of them die with the server.
    run([&]() -> asio::awaitable<void> {
        auto a = co_await pool.begin();
        auto b = co_await pool.begin();
        auto c = co_await pool.begin();
        co_await c.commit();
    }());
    const auto [status, output] =
        run_command({(source_dir() / "deploy/local/services").string(), "restart", "postgres"}, 120s);
    ASSERT_EQ(status, 0) << output;
    const auto value = run([&]() -> asio::awaitable<std::int64_t> {
        auto transaction = co_await pool.begin();
        const auto result = co_await transaction.query("SELECT 7");
        co_await transaction.commit();
        co_return result.integer(0, 0);
    }());
    EXPECT_EQ(value, 7);
}

TEST_F(PgTest, MigrationsApplyOnceInOrderAndRefuseAnEditedOne) {
    auto pool = make_pool(1);
    run(pool.query("DROP TABLE IF EXISTS pg_test_migrated"));
    run(pool.query("DELETE FROM conveyor.schema_migrations WHERE version >= 900000"));
    std::vector<pg::Migration> migrations{
        {900002, "second", "INSERT INTO pg_test_migrated VALUES (2);"},
        {900001, "first", "CREATE TABLE pg_test_migrated (n int); INSERT INTO pg_test_migrated VALUES (1);"},
    };
    EXPECT_EQ(run(pg::migrate(pool, migrations)), 2);
    EXPECT_EQ(run(pg::migrate(pool, migrations)), 0);
    EXPECT_EQ(run(pool.query("SELECT string_agg(n::text, ',' ORDER BY n) FROM pg_test_migrated")).text(0, 0), "1,2");

    migrations[0].sql = "INSERT INTO pg_test_migrated VALUES (3);";
    EXPECT_THROW(run(pg::migrate(pool, migrations)), std::runtime_error);
    migrations.push_back({900001, "again", "SELECT 1;"});
    EXPECT_THROW(run(pg::migrate(pool, migrations)), std::invalid_argument);

    // A failing migration leaves no trace: its transaction rolls back.
    std::vector<pg::Migration> failing{{900003, "broken", "INSERT INTO pg_test_migrated VALUES (4); SELEC 1;"}};
    EXPECT_THROW(run(pg::migrate(pool, failing)), pg::Error);
    EXPECT_EQ(run(pool.query("SELECT count(*) FROM pg_test_migrated")).integer(0, 0), 2);
    EXPECT_EQ(run(pool.query("SELECT count(*) FROM conveyor.schema_migrations WHERE version = 900003")).integer(0, 0),
              0);
    run(pool.query("DELETE FROM conveyor.schema_migrations WHERE version >= 900000"));
    run(pool.query("DROP TABLE pg_test_migrated"));
}

}  // namespace
}  // namespace conveyor::testing
