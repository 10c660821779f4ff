#pragma once

#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <chrono>
#include <map>
#include <mutex>
#include <string>

namespace conveyor {

/// Stops calls to a dependency that keeps failing, so that its callers wait instead of piling on (and instead of
/// burning their retries). Closed: calls go ahead, and `failure_threshold` failures in a row open it. Open: no
/// calls for `open_for`. Half-open: one trial call at a time; its success closes the circuit, its failure opens
/// it again. Thread-safe. Its state is the gauge conveyor_circuit_breaker_state{circuit} (0 closed,
/// 1 half-open, 2 open).
class CircuitBreaker {
  public:
    enum class State { closed = 0, half_open = 1, open = 2 };

    struct Settings {
        unsigned failure_threshold = 5;
        std::chrono::milliseconds open_for{10'000};
    };

    /// The right to make one call. Report its result with succeeded() or failed(); a permit dropped without
    /// either (the caller was cancelled) counts as neither.
    class Permit {
      public:
        Permit(Permit&& other) noexcept
            : breaker_(other.breaker_), trial_(other.trial_), retry_after_(other.retry_after_) {
            other.breaker_ = nullptr;
        }
        Permit& operator=(Permit&&) = delete;
        Permit(const Permit&) = delete;
        Permit& operator=(const Permit&) = delete;
        ~Permit();

        /// The call went ahead: false while the circuit is open (or another trial call is under way).
        [[nodiscard]] bool granted() const noexcept { return breaker_ != nullptr; }
        /// The one call a half-open circuit lets through to see whether the dependency is back.
        [[nodiscard]] bool trial() const noexcept { return trial_; }
        /// When it is not granted, how long until the circuit may let a call through.
        [[nodiscard]] std::chrono::milliseconds retry_after() const noexcept { return retry_after_; }

        void succeeded();
        void failed();

      private:
        friend class CircuitBreaker;
        Permit(CircuitBreaker* breaker, bool trial, std::chrono::milliseconds retry_after) noexcept
            : breaker_(breaker), trial_(trial), retry_after_(retry_after) {}

        CircuitBreaker* breaker_;
        bool trial_;
        std::chrono::milliseconds retry_after_{0};
    };

    CircuitBreaker(std::string name, Settings settings, prometheus::Registry& metrics);

    /// The state of every circuit breaker registered with `metrics`, by name: closed, half_open or open. For the
    /// worker's heartbeat, which knows the registry and not the job families' breakers.
    [[nodiscard]] static std::map<std::string, std::string> states(const prometheus::Registry& metrics);

    [[nodiscard]] Permit acquire();
    [[nodiscard]] State state() const;
    [[nodiscard]] const std::string& name() const noexcept { return name_; }

  private:
    using Clock = std::chrono::steady_clock;

    void record(bool success, bool trial);
    void enter(State state);

    std::string name_;
    Settings settings_;
    prometheus::Gauge& state_gauge_;
    mutable std::mutex mutex_;
    State state_ = State::closed;
    unsigned consecutive_failures_ = 0;
    bool trial_in_flight_ = false;
    Clock::time_point open_until_{};
};

}  // namespace conveyor
