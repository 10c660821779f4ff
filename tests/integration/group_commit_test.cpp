#include "group_commit.hpp"

#include <gtest/gtest.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <set>

#include "test_support.hpp"

namespace conveyor::testing {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using worker::GroupCommit;
using worker::GroupCommitSettings;
using worker::GroupVerdict;
using worker::TurnEnd;

/// What a job does in its turn.
enum class Part {
    write,         ///< writes its row
    fail_after,    ///< writes its row, then fails: its turn is undone
    failed_sql,    ///< a statement of its fails (the transaction is aborted until its savepoint is rolled back)
    write_twin,    ///< writes its row with a value only the commit checks (a deferred unique constraint)
    hold_hot_row,  ///< locks the hot row, then keeps its turn for 500 ms
    hold,          ///< keeps its turn for 500 ms, then writes its row
    want_hot_row,  ///< wants the hot row: it takes the job out of its group if another group holds it
};

struct Ended {
    std::string job;
    bool claimed = false;
    std::optional<GroupVerdict> verdict;  ///< none: it never had a turn
    std::string failure;
    std::int64_t transaction_id = 0;
    std::chrono::milliseconds took{0};
};

/// GroupCommit on the real database: jobs as the execute stage runs them (join, their statements, end), the lanes
/// as the worker serves them. Each test's jobs are in line before the lanes start, unless it says otherwise.
class GroupCommitTest : public ::testing::Test {
  protected:
    void SetUp() override {
        database_.query(
            "CREATE TABLE IF NOT EXISTS public.group_commit_rows (job text PRIMARY KEY, transaction_id bigint, "
            "twin int UNIQUE DEFERRABLE INITIALLY DEFERRED)");
        database_.query("TRUNCATE public.group_commit_rows");
        database_.query("INSERT INTO public.group_commit_rows (job) VALUES ('hot')");
        database_.query("DELETE FROM conveyor.inbox WHERE message_id LIKE 'group-commit-%'");
    }

    pg::Pool make_pool() {
        pg::Settings settings;
        settings.url = pg_url();
        settings.pool_size = 6;
        settings.statement_timeout = 5s;
        return {io_.get_executor(), settings};
    }

    static asio::awaitable<Ended> job(GroupCommit& groups, std::string id, Part part) {
        Ended ended;
        ended.job = id;
        const auto started = std::chrono::steady_clock::now();
        try {
            auto turn = co_await groups.join("group-commit-" + id, "diag.ledger");
            if (!turn) {
                co_return ended;
            }
            ended.claimed = turn->claimed();
            auto how = co_await do_part(turn->transaction(), id, part, ended);
            ended.verdict = co_await turn->end(how);
        } catch (const std::exception& e) {
            ended.failure = e.what();
        }
        ended.took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
        co_return ended;
    }

    static asio::awaitable<TurnEnd> do_part(pg::Transaction& transaction, const std::string& id, Part part,
                                            Ended& ended) {
        const auto txid = co_await transaction.query("SELECT txid_current()");
        ended.transaction_id = txid.integer(0, 0);
        if (part == Part::hold_hot_row || part == Part::want_hot_row) {
            std::string failure;
            try {
                co_await transaction.query("UPDATE public.group_commit_rows SET transaction_id = 0 WHERE job = 'hot'");
            } catch (const pg::Error& e) {
                failure = e.sqlstate();
            }
            if (failure == "55P03") {
                co_return TurnEnd::run_alone;
            }
            asio::steady_timer hold(co_await asio::this_coro::executor, part == Part::hold_hot_row ? 500ms : 0ms);
            co_await hold.async_wait(asio::use_awaitable);
        }
        if (part == Part::hold) {
            asio::steady_timer hold(co_await asio::this_coro::executor, 500ms);
            co_await hold.async_wait(asio::use_awaitable);
        }
        if (part == Part::failed_sql) {
            try {
                co_await transaction.query("SELECT 1 / 0");
            } catch (const pg::Error&) {
                co_return TurnEnd::undo;
            }
        }
        const auto twin = part == Part::write_twin ? std::optional<int>(7) : std::nullopt;
        co_await transaction.query(
            "INSERT INTO public.group_commit_rows (job, transaction_id, twin) VALUES ($1, $2, $3)", id,
            ended.transaction_id, twin);
        co_return part == Part::fail_after ? TurnEnd::undo : TurnEnd::keep;
    }

    /// Another worker's transaction: it locks the hot row and holds it for `hold`. (A function, not a lambda: a
    /// coroutine lambda's captures die with the lambda, before the coroutine ends.)
    static asio::awaitable<void> hold_hot_row_elsewhere(pg::Pool& pool, std::chrono::milliseconds hold) {
        auto other = co_await pool.begin();
        co_await other.query("UPDATE public.group_commit_rows SET transaction_id = -1 WHERE job = 'hot'");
        asio::steady_timer timer(co_await asio::this_coro::executor, hold);
        co_await timer.async_wait(asio::use_awaitable);
        co_await other.commit();
    }

    /// A job that joins `after` the lanes started.
    struct Late {
        std::string id;
        Part part = Part::write;
        std::chrono::milliseconds after{0};
    };

    /// Runs the jobs with lanes of `settings`, and returns how each ended, in the order given, the late one last.
    std::vector<Ended> run(GroupCommitSettings settings, const std::vector<std::pair<std::string, Part>>& jobs,
                           std::optional<Late> late = std::nullopt) {
        auto pool = make_pool();
        GroupCommit groups(pool, settings);
        const auto total = jobs.size() + (late ? 1 : 0);
        std::vector<Ended> ended(total);
        std::size_t finished = 0;
        asio::cancellation_signal stop_lanes;
        auto spawn = [&](std::size_t i, std::string id, Part part) {
            asio::co_spawn(io_, job(groups, std::move(id), part), [&, i](const std::exception_ptr&, Ended outcome) {
                ended[i] = std::move(outcome);
                if (++finished == total) {
                    stop_lanes.emit(asio::cancellation_type::terminal);
                }
            });
        };
        for (std::size_t i = 0; i < jobs.size(); ++i) {
            spawn(i, jobs[i].first, jobs[i].second);
            io_.poll();  // in line, in this order
        }
        asio::co_spawn(io_, groups.serve(), asio::bind_cancellation_slot(stop_lanes.slot(), asio::detached));
        asio::steady_timer late_timer(io_, late ? late->after : 0ms);
        if (late) {
            late_timer.async_wait([&](boost::system::error_code) { spawn(jobs.size(), late->id, late->part); });
        }
        io_.run();
        return ended;
    }

    /// Another worker's transaction holds the hot row for `hold`; returns once it does.
    void hold_hot_row_elsewhere_for(pg::Pool& pool, std::chrono::milliseconds hold) {
        asio::co_spawn(io_, hold_hot_row_elsewhere(pool, hold), asio::detached);
        auto held = [&] {
            return database_.scalar(
                       "SELECT count(*) FROM (SELECT FROM public.group_commit_rows WHERE job = 'hot' "
                       "FOR UPDATE SKIP LOCKED) AS free") == 0;
        };
        const auto until = std::chrono::steady_clock::now() + 5s;
        while (!held() && std::chrono::steady_clock::now() < until) {
            io_.run_for(20ms);
        }
        ASSERT_TRUE(held());
    }

    /// With two open groups allowed and only one for `narrowed` after a take-out: "wanting" is taken out of its
    /// group by a lock held elsewhere, "holder" then keeps its next group's turn for 500 ms, and "late" arrives
    /// 200 ms in. Returns how the three ended, once each has checked its verdict.
    std::vector<Ended> run_after_a_take_out(std::chrono::milliseconds narrowed) {
        auto pool = make_pool();
        hold_hot_row_elsewhere_for(pool, 1s);
        auto ended = run({.lanes = 2, .open_groups = 2, .lock_wait = 50ms, .narrowed = narrowed},
                         {{"wanting", Part::want_hot_row}, {"holder", Part::hold}}, Late{"late", Part::write, 200ms});
        EXPECT_EQ(ended[0].verdict, GroupVerdict::run_alone) << ended[0].failure;
        EXPECT_EQ(ended[1].verdict, GroupVerdict::committed) << ended[1].failure;
        EXPECT_EQ(ended[2].verdict, GroupVerdict::committed) << ended[2].failure;
        return ended;
    }

    [[nodiscard]] std::set<std::string> rows() {
        std::set<std::string> written;
        for (const auto& row : database_.query("SELECT job FROM public.group_commit_rows WHERE job <> 'hot'")) {
            written.insert(row.at(0));
        }
        return written;
    }

    asio::io_context io_;
    Database database_;
};

TEST_F(GroupCommitTest, JobsReadyTogetherShareOneTransactionAndOneCommit) {
    std::vector<std::pair<std::string, Part>> jobs;
    for (int i = 0; i < 10; ++i) {
        jobs.emplace_back(fmt::format("share-{}", i), Part::write);
    }
    const auto ended = run({.lanes = 1}, jobs);
    std::set<std::int64_t> transactions;
    for (const auto& each : ended) {
        EXPECT_EQ(each.verdict, GroupVerdict::committed) << each.job << ": " << each.failure;
        EXPECT_TRUE(each.claimed) << each.job;
        transactions.insert(each.transaction_id);
    }
    EXPECT_EQ(transactions.size(), 1U);
    EXPECT_EQ(rows().size(), 10U);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.inbox WHERE message_id LIKE 'group-commit-share-%'"), 10);
}

TEST_F(GroupCommitTest, AGroupHoldsAtMostItsMaximumOfJobs) {
    std::vector<std::pair<std::string, Part>> jobs;
    for (int i = 0; i < 10; ++i) {
        jobs.emplace_back(fmt::format("max-{}", i), Part::write);
    }
    const auto ended = run({.max_members = 4, .lanes = 1}, jobs);
    std::map<std::int64_t, int> per_transaction;
    for (const auto& each : ended) {
        EXPECT_EQ(each.verdict, GroupVerdict::committed) << each.job << ": " << each.failure;
        ++per_transaction[each.transaction_id];
    }
    EXPECT_EQ(per_transaction.size(), 3U);
    for (const auto& [transaction, members] : per_transaction) {
        EXPECT_LE(members, 4);
    }
    EXPECT_EQ(rows().size(), 10U);
}

TEST_F(GroupCommitTest, AFailingJobIsUndoneAloneAndItsNeighboursCommit) {
    const auto ended =
        run({.lanes = 1}, {{"a", Part::write}, {"b", Part::fail_after}, {"c", Part::failed_sql}, {"d", Part::write}});
    EXPECT_EQ(ended[0].verdict, GroupVerdict::committed) << ended[0].failure;
    EXPECT_EQ(ended[1].verdict, GroupVerdict::undone) << ended[1].failure;
    EXPECT_EQ(ended[2].verdict, GroupVerdict::undone) << ended[2].failure;
    EXPECT_EQ(ended[3].verdict, GroupVerdict::committed) << ended[3].failure;
    EXPECT_EQ(ended[0].transaction_id, ended[3].transaction_id);
    EXPECT_EQ(rows(), (std::set<std::string>{"a", "d"}));
    // The claims of the undone jobs went with their savepoints: they can run again.
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.inbox WHERE message_id IN ('group-commit-b', "
                               "'group-commit-c')"),
              0);
}

TEST_F(GroupCommitTest, AJobTheInboxHasAlreadyIsNotClaimed) {
    database_.query("INSERT INTO conveyor.inbox (message_id, type) VALUES ('group-commit-seen', 'diag.ledger')");
    const auto ended = run({.lanes = 1}, {{"seen", Part::write}, {"new", Part::write}});
    EXPECT_FALSE(ended[0].claimed);
    EXPECT_TRUE(ended[1].claimed);
}

TEST_F(GroupCommitTest, AFailedCommitSendsEveryJobOfTheGroupToRunAlone) {
    const auto ended =
        run({.lanes = 1}, {{"x", Part::write}, {"twin-1", Part::write_twin}, {"twin-2", Part::write_twin}});
    for (const auto& each : ended) {
        EXPECT_EQ(each.verdict, GroupVerdict::run_alone) << each.job << ": " << each.failure;
    }
    EXPECT_TRUE(rows().empty());
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.inbox WHERE message_id LIKE 'group-commit-%'"), 0);
}

TEST_F(GroupCommitTest, OneGroupRunsItsJobsAtATimeSoJobsArrivingMeanwhileJoinIt) {
    // Two lanes, but the second opens its group only once the first commits: the jobs in line while the first
    // job holds its turn join its group rather than start a second one beside it, where they could take locks
    // crosswise with it.
    const auto ended = run({.lanes = 2}, {{"holder", Part::hold_hot_row}, {"w1", Part::write}, {"w2", Part::write}});
    for (const auto& each : ended) {
        EXPECT_EQ(each.verdict, GroupVerdict::committed) << each.job << ": " << each.failure;
        EXPECT_EQ(each.transaction_id, ended[0].transaction_id) << each.job;
    }
}

TEST_F(GroupCommitTest, ALockHeldOutsideTheGroupTakesTheJobOutAndItsGroupCommitsAtOnceTheRestJoiningTheNext) {
    // Another worker's transaction holds the hot row for 1 s: the job that wants it leaves its group after the lock
    // wait (it runs again alone later), and its group commits at once rather than let the jobs after it wait for
    // the same lock: they are given back, their claims undone, and commit in the next group.
    auto pool = make_pool();
    hold_hot_row_elsewhere_for(pool, 1s);
    const auto ended = run({.lanes = 2, .lock_wait = 50ms},
                           {{"before", Part::write}, {"wanting", Part::want_hot_row}, {"after", Part::write}});
    EXPECT_EQ(ended[1].verdict, GroupVerdict::run_alone) << ended[1].failure;
    EXPECT_LT(ended[1].took, 500ms);
    EXPECT_EQ(ended[0].verdict, GroupVerdict::committed) << ended[0].failure;
    EXPECT_EQ(ended[2].verdict, GroupVerdict::committed) << ended[2].failure;
    EXPECT_EQ(ended[0].transaction_id, ended[1].transaction_id);
    EXPECT_NE(ended[2].transaction_id, ended[0].transaction_id);
    EXPECT_TRUE(ended[2].claimed);
    EXPECT_EQ(rows(), (std::set<std::string>{"before", "after"}));
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.inbox WHERE message_id LIKE 'group-commit-%'"), 2);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.inbox WHERE message_id = 'group-commit-after'"), 1);
}

TEST_F(GroupCommitTest, AfterAJobIsTakenOutOfItsGroupOnlyOneGroupOpensForAWhile) {
    // Two groups may be open, but a job was just taken out for a lock wait: the job arriving while the next group
    // holds its turns joins that group instead of opening one beside it.
    const auto ended = run_after_a_take_out(10s);
    EXPECT_EQ(ended[2].transaction_id, ended[1].transaction_id);
}

TEST_F(GroupCommitTest, OnceTheNarrowingIsOverASecondGroupOpensBesideAnOpenOne) {
    // The same, with the narrowing over at once: the late job opens a second group and commits without waiting for
    // the holder's turn.
    const auto ended = run_after_a_take_out(0ms);
    EXPECT_NE(ended[2].transaction_id, ended[1].transaction_id);
    EXPECT_LT(ended[2].took, 300ms);
}

TEST_F(GroupCommitTest, AJobCancelledWhileInLineLeavesItAndTheOthersGoOn) {
    auto pool = make_pool();
    GroupCommit groups(pool, {.lanes = 1});
    asio::cancellation_signal stop_lanes;
    asio::cancellation_signal cancel_waiting;
    Ended holder;
    Ended cancelled;
    Ended last;
    int finished = 0;
    auto count = [&] {
        if (++finished == 3) {
            stop_lanes.emit(asio::cancellation_type::terminal);
        }
    };
    asio::co_spawn(io_, job(groups, "hold", Part::hold_hot_row), [&](const std::exception_ptr&, Ended e) {
        holder = std::move(e);
        count();
    });
    io_.poll();
    asio::co_spawn(io_, job(groups, "cancelled", Part::write),
                   asio::bind_cancellation_slot(cancel_waiting.slot(), [&](const std::exception_ptr&, Ended e) {
                       cancelled = std::move(e);
                       count();
                   }));
    io_.poll();
    asio::co_spawn(io_, job(groups, "after", Part::write), [&](const std::exception_ptr&, Ended e) {
        last = std::move(e);
        count();
    });
    io_.poll();
    asio::co_spawn(io_, groups.serve(), asio::bind_cancellation_slot(stop_lanes.slot(), asio::detached));
    asio::steady_timer cancel_at(io_, 100ms);
    cancel_at.async_wait([&](boost::system::error_code) { cancel_waiting.emit(asio::cancellation_type::terminal); });
    io_.run();
    EXPECT_FALSE(cancelled.verdict.has_value());
    EXPECT_NE(cancelled.failure.find("cancel"), std::string::npos) << cancelled.failure;
    EXPECT_EQ(holder.verdict, GroupVerdict::committed) << holder.failure;
    EXPECT_EQ(last.verdict, GroupVerdict::committed) << last.failure;
    EXPECT_EQ(holder.transaction_id, last.transaction_id);
    EXPECT_EQ(rows(), (std::set<std::string>{"hold", "after"}));
}

TEST_F(GroupCommitTest, OnceTheLanesHaveStoppedAJobIsRefused) {
    auto pool = make_pool();
    std::optional<GroupCommit> groups(std::in_place, pool, GroupCommitSettings{});
    asio::cancellation_signal stop_lanes;
    asio::co_spawn(io_, groups->serve(), asio::bind_cancellation_slot(stop_lanes.slot(), asio::detached));
    io_.poll();
    stop_lanes.emit(asio::cancellation_type::terminal);
    io_.run();
    io_.restart();
    Ended refused;
    asio::co_spawn(io_, job(*groups, "late", Part::write),
                   [&](const std::exception_ptr&, Ended e) { refused = std::move(e); });
    io_.run();
    EXPECT_FALSE(refused.verdict.has_value());
    EXPECT_FALSE(refused.failure.empty());
}

}  // namespace
}  // namespace conveyor::testing
