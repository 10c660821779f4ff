#include "place_pool.hpp"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_future.hpp>
#include <future>

namespace conveyor::worker {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

/// How long a wait that should not end is watched; a woken wait must end well within kWoken.
constexpr auto kStillWaiting = 30ms;
constexpr auto kWoken = 10s;
constexpr auto kPatience = 60s;

class PlacePoolTest : public ::testing::Test {
  protected:
    static ConcurrencyPlace place(const std::string& key, std::string label = {}) {
        return {"shop.sync", key, 2, std::move(label)};
    }

    /// A job of `key` waiting for a place here: its future says whether it got one, and which.
    std::future<std::optional<std::string>> wait_for(const std::string& key,
                                                     std::chrono::milliseconds patience = kPatience) {
        auto waiting = [this, key, patience]() -> asio::awaitable<std::optional<std::string>> {
            auto wanted = place(key);
            const bool got = co_await pool_.wait_for_place(wanted, patience);
            co_return got ? std::optional(wanted.label) : std::nullopt;
        };
        return asio::co_spawn(asio::make_strand(threads_), waiting, asio::use_future);
    }

    static bool still_waiting(std::future<std::optional<std::string>>& waiting) {
        return waiting.wait_for(kStillWaiting) == std::future_status::timeout;
    }

    static std::optional<std::string> outcome(std::future<std::optional<std::string>>& waiting) {
        EXPECT_EQ(waiting.wait_for(kWoken), std::future_status::ready) << "the wait did not end";
        return waiting.get();
    }

    void TearDown() override { threads_.join(); }

    asio::thread_pool threads_{2};
    PlacePool pool_{{.linger = 500ms, .max_waiters = 3}};
};

TEST_F(PlacePoolTest, AFreedPlaceGoesToTheNextJobOfItsKeyAndKeepsItsLabel) {
    pool_.add(place("c1", "job-1"));
    auto next = place("c1");
    EXPECT_FALSE(pool_.take_free(next)) << "a place in use was taken";
    EXPECT_FALSE(pool_.put_back(place("c1", "job-1")));
    EXPECT_TRUE(pool_.take_free(next));
    EXPECT_EQ(next.label, "job-1") << "the database holds the place under the job that first took it";
    auto other_key = place("c2");
    EXPECT_FALSE(pool_.take_free(other_key)) << "a place went to another key";
}

TEST_F(PlacePoolTest, AWaitingJobTakesThePlaceTheFirstToEndFreesAndOthersWaitOn) {
    pool_.add(place("c1", "job-1"));
    pool_.add(place("c1", "job-2"));
    auto first = wait_for("c1");
    ASSERT_TRUE(still_waiting(first));
    auto second = wait_for("c1");
    ASSERT_TRUE(still_waiting(second));
    EXPECT_FALSE(pool_.put_back(place("c1", "job-2")));
    const auto handed = outcome(first);
    ASSERT_TRUE(handed);
    EXPECT_EQ(*handed, "job-2");
    EXPECT_TRUE(still_waiting(second)) << "one freed place went to two jobs";
    EXPECT_FALSE(pool_.put_back(place("c1", "job-1")));
    EXPECT_EQ(outcome(second), "job-1");
}

TEST_F(PlacePoolTest, NoJobWaitsWhereNoPlaceIsInUseOrWhereTheLimitOfWaitersIsReached) {
    auto unheld = wait_for("c1");
    EXPECT_EQ(outcome(unheld), std::nullopt) << "a job waited for a key this worker holds no place of";
    pool_.add(place("c1", "job-1"));
    auto first = wait_for("c1");
    auto second = wait_for("c1");
    ASSERT_TRUE(still_waiting(first));
    ASSERT_TRUE(still_waiting(second));
    auto third = wait_for("c1");
    EXPECT_EQ(outcome(third), std::nullopt) << "more jobs waited for a key than its limit";
    pool_.add(place("c2", "job-9"));
    auto other = wait_for("c2");
    EXPECT_TRUE(still_waiting(other));
    auto over = wait_for("c2");
    EXPECT_EQ(outcome(over), std::nullopt) << "more jobs waited than max_waiters";
    pool_.stop();
    EXPECT_EQ(outcome(first), std::nullopt);
    EXPECT_EQ(outcome(second), std::nullopt);
    EXPECT_EQ(outcome(other), std::nullopt);
}

TEST_F(PlacePoolTest, AJobOutOfPatienceLeavesAndTheNextPlaceStaysFree) {
    pool_.add(place("c1", "job-1"));
    auto impatient = wait_for("c1", 20ms);
    EXPECT_EQ(outcome(impatient), std::nullopt);
    EXPECT_FALSE(pool_.put_back(place("c1", "job-1")));
    auto next = place("c1");
    EXPECT_TRUE(pool_.take_free(next)) << "the place went to a job that had left";
}

TEST_F(PlacePoolTest, AnUnusedPlaceGoesBackAfterItsLingerAndAtShutdown) {
    pool_.add(place("c1", "job-1"));
    pool_.add(place("c2", "job-2"));
    const auto start = PlacePool::Clock::now();
    EXPECT_FALSE(pool_.put_back(place("c1", "job-1")));
    EXPECT_TRUE(pool_.take_unused(start).empty()) << "a place went back before its linger";
    const auto later = pool_.take_unused(PlacePool::Clock::now() + 501ms);
    ASSERT_EQ(later.size(), 1U);
    EXPECT_EQ(later[0].label, "job-1");
    EXPECT_EQ(later[0].limit, 2U);
    EXPECT_EQ(pool_.keys(), std::vector<PlaceKey>{(PlaceKey{"shop.sync", "c2"})}) << "a key held nothing";
    pool_.stop();
    const auto given_back = pool_.put_back(place("c2", "job-2"));
    ASSERT_TRUE(given_back) << "a draining worker kept a place";
    EXPECT_EQ(given_back->label, "job-2");
    EXPECT_TRUE(pool_.keys().empty());
}

TEST_F(PlacePoolTest, AContendedKeyGivesUpItsFreePlacesAndKeepsNoneUntilItsLineIsGone) {
    pool_.add(place("c1", "job-1"));
    pool_.add(place("c1", "job-2"));
    pool_.add(place("c2", "job-3"));
    EXPECT_FALSE(pool_.put_back(place("c1", "job-1")));
    EXPECT_FALSE(pool_.put_back(place("c2", "job-3")));
    const auto given_up = pool_.set_contended({PlaceKey{"shop.sync", "c1"}});
    ASSERT_EQ(given_up.size(), 1U);
    EXPECT_EQ(given_up[0].label, "job-1");
    auto waiting = wait_for("c1");
    EXPECT_EQ(outcome(waiting), std::nullopt) << "a job waited here ahead of the key's line";
    const auto freed = pool_.put_back(place("c1", "job-2"));
    ASSERT_TRUE(freed) << "a contended key kept a place from its line";
    auto quiet = place("c2");
    EXPECT_TRUE(pool_.take_free(quiet)) << "another key lost its place";
    EXPECT_TRUE(pool_.set_contended({}).empty());
    pool_.add(place("c1", "job-4"));
    EXPECT_FALSE(pool_.put_back(place("c1", "job-4"))) << "the key stayed contended after its line was gone";
}

}  // namespace
}  // namespace conveyor::worker
