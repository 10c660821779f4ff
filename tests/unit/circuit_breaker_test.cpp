#include "conveyor/core/circuit_breaker.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <thread>

namespace conveyor {
namespace {

using std::chrono::milliseconds;
using State = CircuitBreaker::State;

// Long enough that no pause of a loaded (or sanitized) test machine between a failure and the next acquire()
// reaches it; the tests that wait it out sleep just past it.
constexpr milliseconds kOpenFor{400};
constexpr unsigned kThreshold = 3;

/// The value of conveyor_circuit_breaker_state{circuit=`circuit`} as a scrape would see it, or nothing if the
/// registry has no such series.
std::optional<double> state_gauge(const prometheus::Registry& metrics, const std::string& circuit) {
    for (const auto& family : metrics.Collect()) {
        if (family.name != "conveyor_circuit_breaker_state") {
            continue;
        }
        for (const auto& metric : family.metric) {
            for (const auto& label : metric.label) {
                if (label.name == "circuit" && label.value == circuit) {
                    return metric.gauge.value;
                }
            }
        }
    }
    return std::nullopt;
}

class CircuitBreakerTest : public ::testing::Test {
  protected:
    /// Makes `count` calls that all fail.
    void fail(unsigned count) {
        for (unsigned i = 0; i < count; ++i) {
            auto permit = breaker_.acquire();
            ASSERT_TRUE(permit.granted()) << "call " << i + 1 << " of " << count;
            permit.failed();
        }
    }

    /// Trips the circuit and waits until it may let a trial call through.
    void open_and_wait_out() {
        ASSERT_NO_FATAL_FAILURE(fail(kThreshold));
        ASSERT_EQ(breaker_.state(), State::open);
        // Just past open_for, so that the next acquire() is the trial.
        std::this_thread::sleep_for(kOpenFor + milliseconds(10));
    }

    prometheus::Registry metrics_;
    CircuitBreaker breaker_{"gateway", {.failure_threshold = kThreshold, .open_for = kOpenFor}, metrics_};
};

TEST_F(CircuitBreakerTest, ClosedLetsEveryCallThrough) {
    for (int i = 0; i < 10; ++i) {
        auto permit = breaker_.acquire();
        ASSERT_TRUE(permit.granted());
        permit.succeeded();
    }
    EXPECT_EQ(breaker_.state(), State::closed);
}

TEST_F(CircuitBreakerTest, OpensAfterExactlyTheThresholdOfFailuresInARow) {
    ASSERT_NO_FATAL_FAILURE(fail(kThreshold - 1));
    EXPECT_EQ(breaker_.state(), State::closed);
    auto last = breaker_.acquire();
    ASSERT_TRUE(last.granted()) << "one failure short of the threshold must still let calls through";
    last.failed();
    EXPECT_EQ(breaker_.state(), State::open);
}

TEST_F(CircuitBreakerTest, ASuccessStartsTheCountOfFailuresAgain) {
    ASSERT_NO_FATAL_FAILURE(fail(kThreshold - 1));
    breaker_.acquire().succeeded();
    ASSERT_NO_FATAL_FAILURE(fail(kThreshold - 1));
    // 2 × (threshold − 1) failures in all, but never threshold in a row.
    EXPECT_EQ(breaker_.state(), State::closed);
    ASSERT_NO_FATAL_FAILURE(fail(1));
    EXPECT_EQ(breaker_.state(), State::open);
}

TEST_F(CircuitBreakerTest, OpenRefusesCallsAndSaysHowLongToWait) {
    ASSERT_NO_FATAL_FAILURE(fail(kThreshold));
    const auto refused = breaker_.acquire();
    EXPECT_FALSE(refused.granted());
    EXPECT_GT(refused.retry_after(), milliseconds(0));
    EXPECT_LE(refused.retry_after(), kOpenFor);
    EXPECT_EQ(breaker_.state(), State::open);
}

TEST_F(CircuitBreakerTest, AfterOpenForOnlyOneTrialCallGoesThrough) {
    ASSERT_NO_FATAL_FAILURE(open_and_wait_out());
    const auto trial = breaker_.acquire();
    ASSERT_TRUE(trial.granted());
    EXPECT_EQ(breaker_.state(), State::half_open);
    // The others wait for the trial's result rather than all hitting a dependency that may still be down.
    const auto second = breaker_.acquire();
    EXPECT_FALSE(second.granted());
    EXPECT_GT(second.retry_after(), milliseconds(0));
}

TEST_F(CircuitBreakerTest, ATrialSuccessClosesTheCircuit) {
    ASSERT_NO_FATAL_FAILURE(open_and_wait_out());
    auto trial = breaker_.acquire();
    ASSERT_TRUE(trial.granted());
    trial.succeeded();
    EXPECT_EQ(breaker_.state(), State::closed);
    EXPECT_TRUE(breaker_.acquire().granted());
    EXPECT_TRUE(breaker_.acquire().granted());
}

TEST_F(CircuitBreakerTest, ATrialFailureOpensTheCircuitAgain) {
    ASSERT_NO_FATAL_FAILURE(open_and_wait_out());
    auto trial = breaker_.acquire();
    ASSERT_TRUE(trial.granted());
    trial.failed();
    EXPECT_EQ(breaker_.state(), State::open);
    const auto refused = breaker_.acquire();
    EXPECT_FALSE(refused.granted());
    EXPECT_GT(refused.retry_after(), milliseconds(0));
    EXPECT_LE(refused.retry_after(), kOpenFor);
}

TEST_F(CircuitBreakerTest, ATrialDroppedWithoutAResultLetsTheNextCallerTry) {
    ASSERT_NO_FATAL_FAILURE(open_and_wait_out());
    {
        // A cancelled caller: its permit goes without succeeded() or failed().
        const auto trial = breaker_.acquire();
        ASSERT_TRUE(trial.granted());
    }
    EXPECT_EQ(breaker_.state(), State::half_open);
    const auto next = breaker_.acquire();
    EXPECT_TRUE(next.granted());
}

TEST_F(CircuitBreakerTest, StateGaugeReadsZeroClosedOneHalfOpenTwoOpen) {
    EXPECT_EQ(state_gauge(metrics_, "gateway"), 0.0);
    ASSERT_NO_FATAL_FAILURE(open_and_wait_out());
    EXPECT_EQ(state_gauge(metrics_, "gateway"), 2.0);
    auto trial = breaker_.acquire();
    ASSERT_TRUE(trial.granted());
    EXPECT_EQ(state_gauge(metrics_, "gateway"), 1.0);
    trial.succeeded();
    EXPECT_EQ(state_gauge(metrics_, "gateway"), 0.0);
}

}  // namespace
}  // namespace conveyor
