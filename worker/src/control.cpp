#include "control.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "conveyor/core/task_group.hpp"
#include "conveyor/core/topology.hpp"
#include "execute.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

// How often the tombstones in PostgreSQL are read for what a broadcast did not bring (a worker that was
// disconnected when it went out); the broadcast itself reaches a connected worker at once.
constexpr auto kFollowInterval = std::chrono::seconds(2);
constexpr auto kPruneInterval = std::chrono::hours(1);

}  // namespace

bool JobControl::cancelled(std::string_view job_id) const {
    const std::lock_guard lock(mutex_);
    return cancelled_.contains(std::string(job_id));
}

bool JobControl::paused(std::string_view queue, std::string_view type) const {
    if (!any_paused_.load(std::memory_order_acquire)) {
        return false;
    }
    const auto family = topology::family_of_queue(queue);
    const std::lock_guard lock(mutex_);
    const auto targets = pauses_.find(family);
    if (targets == pauses_.end()) {
        return false;
    }
    for (const std::string_view target : {std::string_view(), type}) {
        const auto state = targets->second.find(target);
        if (state != targets->second.end() && state->second.paused) {
            return true;
        }
    }
    return false;
}

void JobControl::apply(const job_control::PauseState& state) {
    bool whole_family = false;
    std::size_t types = 0;
    {
        const std::lock_guard lock(mutex_);
        auto& targets = pauses_[state.family];
        auto [held, inserted] = targets.try_emplace(state.job_type, state);
        if (!inserted) {
            if (held->second.version >= state.version) {
                return;
            }
            held->second = state;
        } else if (!state.paused) {
            return;  // a resume of what this worker never saw paused changes nothing
        }
        for (const auto& [job_type, target] : targets) {
            if (!target.paused) {
                continue;
            }
            if (job_type.empty()) {
                whole_family = true;
            } else {
                ++types;
            }
        }
        const bool any = std::any_of(pauses_.begin(), pauses_.end(), [](const auto& family) {
            return std::any_of(family.second.begin(), family.second.end(),
                               [](const auto& target) { return target.second.paused; });
        });
        any_paused_.store(any, std::memory_order_release);
    }
    spdlog::info("control: {} {}{}", state.paused ? "paused" : "resumed", state.family,
                 state.job_type.empty() ? std::string() : fmt::format(" (type {})", state.job_type));
    on_pause_change_(state.family, whole_family, types);
}

JobControl::Running::Running(JobControl& control, const std::string& job_id, JobSlot& slot) : control_(control) {
    const std::lock_guard lock(control_.mutex_);
    entry_ = control_.running_.emplace(job_id, &slot);
}

JobControl::Running::~Running() {
    const std::lock_guard lock(control_.mutex_);
    control_.running_.erase(entry_);
}

void JobControl::cancel(const std::string& job_id) {
    const std::lock_guard lock(mutex_);
    if (!cancelled_.insert(job_id).second) {
        return;
    }
    const auto [first, last] = running_.equal_range(job_id);
    for (auto it = first; it != last; ++it) {
        JobSlot* slot = it->second;
        // The slot's signal belongs to its strand; by the time this runs the slot may have moved on to another job.
        asio::post(slot->task.strand(), [slot, job_id] {
            if (slot->running_job == job_id && !slot->cancel_requested) {
                slot->cancel_requested = true;
                slot->task.signal().emit(asio::cancellation_type::terminal);
            }
        });
    }
}

asio::awaitable<void> JobControl::listen(amqp::DeliveryChannel& deliveries, amqp::Connection& consumer) {
    while (true) {
        auto [error, batch] = co_await deliveries.async_receive(asio::as_tuple(asio::use_awaitable));
        if (error) {
            co_return;  // closed at shutdown
        }
        for (const auto& delivery : batch) {
            consumer.ack(delivery);
            const auto command = job_control::decode(delivery.message.body);
            if (!command) {
                spdlog::warn("control: ignored a message that is not a command ({} bytes)",
                             delivery.message.body.size());
                continue;
            }
            if (const auto* pause = std::get_if<job_control::PauseState>(&*command)) {
                apply(*pause);
                continue;
            }
            const auto& job_id = std::get<job_control::Cancel>(*command).job_id;
            spdlog::info("control: cancel {}", job_id);
            cancel(job_id);
        }
    }
}

asio::awaitable<void> JobControl::load_pauses() {
    for (const auto& state : co_await job_control::pauses(pool_)) {
        apply(state);
    }
}

asio::awaitable<void> JobControl::load_new() {
    auto tombstones = co_await job_control::tombstones_since(pool_, last_seq_);
    last_seq_ = tombstones.last_seq;
    for (const auto& job_id : tombstones.job_ids) {
        cancel(job_id);
    }
    co_await load_pauses();
}

asio::awaitable<void> JobControl::follow_records() {
    auto next_prune = Clock::now() + kPruneInterval;
    std::string last_failure;
    bool following = true;
    while (following) {
        std::string failure;
        try {
            if (Clock::now() >= next_prune) {
                next_prune = Clock::now() + kPruneInterval;
                co_await job_control::prune(pool_, retention_);
            }
            co_await load_new();
        } catch (const std::exception& e) {
            failure = e.what();
        }
        // Said once per failure, not every round of an outage, and not for the shutdown's cancellation.
        const auto state = co_await asio::this_coro::cancellation_state;
        if (!failure.empty() && failure != last_failure && !conveyor::cancelled(state)) {
            spdlog::warn("control: cannot read the cancellations and pauses ({}); broadcasts still arrive", failure);
        }
        last_failure = failure;
        following = co_await wait_until(Clock::now() + kFollowInterval);
    }
}

}  // namespace conveyor::worker
