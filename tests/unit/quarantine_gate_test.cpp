#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_future.hpp>
#include <future>

#include "quarantine.hpp"

namespace conveyor::worker {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

/// How long a wait that should not end is watched; a woken wait must end well within kWoken.
constexpr auto kStillWaiting = 30ms;
constexpr auto kWoken = 10s;

/// The gate itself never touches the database; the pool only has to exist.
class QuarantineGate : public ::testing::Test {
  protected:
    std::future<bool> enter(bool exclusive) {
        auto strand = asio::make_strand(threads_);
        return exclusive ? asio::co_spawn(strand, quarantine_.enter_exclusive(abandon_), asio::use_future)
                         : asio::co_spawn(strand, quarantine_.enter_shared(abandon_), asio::use_future);
    }

    static bool still_waiting(std::future<bool>& entry) {
        return entry.wait_for(kStillWaiting) == std::future_status::timeout;
    }

    static bool entered(std::future<bool>& entry) {
        return entry.wait_for(kWoken) == std::future_status::ready && entry.get();
    }

    asio::thread_pool threads_{2};
    pg::Pool pool_{threads_.get_executor(), pg::Settings{}};
    Quarantine quarantine_{pool_, 1};
    std::atomic<bool> abandon_{false};
};

TEST_F(QuarantineGate, ASuspectWaitsForTheJobsBesideItToEndAndThenRunsAlone) {
    ASSERT_TRUE(quarantine_.try_enter_shared());
    ASSERT_TRUE(quarantine_.try_enter_shared());
    auto suspect = enter(true);
    EXPECT_TRUE(still_waiting(suspect));
    EXPECT_FALSE(quarantine_.try_enter_shared()) << "a job entered while a suspect waited to run alone";
    auto ordinary = enter(false);
    quarantine_.leave_shared();
    EXPECT_TRUE(still_waiting(suspect)) << "the suspect ran beside a job";
    quarantine_.leave_shared();
    EXPECT_TRUE(entered(suspect));
    EXPECT_TRUE(still_waiting(ordinary)) << "a job entered while the suspect ran";
    quarantine_.leave_exclusive();
    EXPECT_TRUE(entered(ordinary));
    quarantine_.leave_shared();
    threads_.join();
}

TEST_F(QuarantineGate, ASecondSuspectWaitsForTheFirstToEnd) {
    auto first = enter(true);
    ASSERT_TRUE(entered(first));
    auto second = enter(true);
    EXPECT_TRUE(still_waiting(second));
    quarantine_.leave_exclusive();
    EXPECT_TRUE(entered(second));
    quarantine_.leave_exclusive();
    threads_.join();
}

TEST_F(QuarantineGate, DrainingEndsEveryWaitAtTheGateAndLeavesItOpen) {
    ASSERT_TRUE(quarantine_.try_enter_shared());
    auto claimed = enter(true);  // claims the gate, waits for the running job
    EXPECT_TRUE(still_waiting(claimed));
    auto queued_suspect = enter(true);
    auto ordinary = enter(false);
    EXPECT_TRUE(still_waiting(queued_suspect));
    EXPECT_TRUE(still_waiting(ordinary));
    abandon_ = true;
    quarantine_.wake_waiters();
    for (auto* entry : {&claimed, &queued_suspect, &ordinary}) {
        ASSERT_EQ(entry->wait_for(kWoken), std::future_status::ready);
        EXPECT_FALSE(entry->get());
    }
    quarantine_.leave_shared();
    EXPECT_TRUE(quarantine_.try_enter_shared()) << "an abandoned suspect kept the gate closed";
    quarantine_.leave_shared();
    threads_.join();
}

}  // namespace
}  // namespace conveyor::worker
