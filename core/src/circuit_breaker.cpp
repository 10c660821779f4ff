#include "conveyor/core/circuit_breaker.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>

namespace conveyor {

namespace {

const char* state_name(CircuitBreaker::State state) {
    switch (state) {
        case CircuitBreaker::State::closed:
            return "closed";
        case CircuitBreaker::State::half_open:
            return "half-open";
        case CircuitBreaker::State::open:
            return "open";
    }
    return "?";
}

constexpr std::string_view kStateMetric = "conveyor_circuit_breaker_state";

// While a trial call is under way, the others look again after this long.
constexpr std::chrono::milliseconds kTrialWait{1000};

}  // namespace

CircuitBreaker::Permit::~Permit() {
    if (breaker_ != nullptr && trial_) {
        // A cancelled trial says nothing about the dependency; the next caller gets to try.
        const std::lock_guard lock(breaker_->mutex_);
        breaker_->trial_in_flight_ = false;
    }
}

void CircuitBreaker::Permit::succeeded() {
    if (auto* breaker = std::exchange(breaker_, nullptr)) {
        breaker->record(true, trial_);
    }
}

void CircuitBreaker::Permit::failed() {
    if (auto* breaker = std::exchange(breaker_, nullptr)) {
        breaker->record(false, trial_);
    }
}

CircuitBreaker::CircuitBreaker(std::string name, Settings settings, prometheus::Registry& metrics)
    : name_(std::move(name)),
      settings_(settings),
      state_gauge_(prometheus::BuildGauge()
                       .Name(std::string(kStateMetric))
                       .Help("State of a circuit breaker: 0 closed, 1 half-open (one trial call), 2 open (calls wait)")
                       .Register(metrics)
                       .Add({{"circuit", name_}})) {
    state_gauge_.Set(0);
}

std::map<std::string, std::string> CircuitBreaker::states(const prometheus::Registry& metrics) {
    static constexpr std::array<const char*, 3> kNames{"closed", "half_open", "open"};
    std::map<std::string, std::string> states;
    for (const auto& family : metrics.Collect()) {
        if (family.name != kStateMetric) {
            continue;
        }
        for (const auto& metric : family.metric) {
            const auto circuit = std::find_if(metric.label.begin(), metric.label.end(),
                                              [](const auto& label) { return label.name == "circuit"; });
            const auto state = static_cast<std::size_t>(std::clamp(metric.gauge.value, 0.0, 2.0));
            if (circuit != metric.label.end()) {
                states[circuit->value] = kNames.at(state);
            }
        }
    }
    return states;
}

CircuitBreaker::Permit CircuitBreaker::acquire() {
    const std::lock_guard lock(mutex_);
    if (state_ == State::open) {
        const auto now = Clock::now();
        if (now < open_until_) {
            return {nullptr, false, std::chrono::ceil<std::chrono::milliseconds>(open_until_ - now)};
        }
        enter(State::half_open);
    }
    if (state_ == State::half_open) {
        if (trial_in_flight_) {
            return {nullptr, false, kTrialWait};
        }
        trial_in_flight_ = true;
        return {this, true, {}};
    }
    return {this, false, {}};
}

CircuitBreaker::State CircuitBreaker::state() const {
    const std::lock_guard lock(mutex_);
    return state_;
}

void CircuitBreaker::record(bool success, bool trial) {
    const std::lock_guard lock(mutex_);
    if (trial) {
        trial_in_flight_ = false;
    }
    if (success) {
        consecutive_failures_ = 0;
        if (state_ != State::closed) {
            enter(State::closed);
        }
        return;
    }
    ++consecutive_failures_;
    const bool trip = state_ == State::half_open ? trial : consecutive_failures_ >= settings_.failure_threshold;
    if (trip && state_ != State::open) {
        open_until_ = Clock::now() + settings_.open_for;
        enter(State::open);
    }
}

void CircuitBreaker::enter(State state) {
    spdlog::log(state == State::closed ? spdlog::level::info : spdlog::level::warn, "circuit {}: {} → {}{}", name_,
                state_name(state_), state_name(state),
                state == State::open ? fmt::format(" after {} failures in a row; calls wait {} ms",
                                                   consecutive_failures_, settings_.open_for.count())
                                     : std::string());
    state_ = state;
    state_gauge_.Set(static_cast<double>(state));
}

}  // namespace conveyor
