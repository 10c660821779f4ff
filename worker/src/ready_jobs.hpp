#pragma once

#include <array>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::worker {

/// Which band a free coroutine starts next when several have jobs at hand: smooth weighted round robin over the
/// bands with a job waiting, so each backlogged band gets its weight's share of the starts, spread evenly, and no
/// band with a weight starves. A band with nothing waiting gains no credit.
class BandPreference {
  public:
    /// Indexed like topology::kBands: high, normal, low. Each at least 1.
    using Weights = std::array<unsigned, topology::kBands.size()>;

    explicit BandPreference(Weights weights) : weights_(weights) {}

    /// `waiting` is indexed like Weights and has at least one band set.
    [[nodiscard]] topology::Band pick(const std::array<bool, topology::kBands.size()>& waiting);

  private:
    Weights weights_;
    std::array<std::int64_t, topology::kBands.size()> credit_{};
};

/// Parses "high:normal:low" weights such as "6:3:1"; throws std::invalid_argument saying what is wrong.
[[nodiscard]] BandPreference::Weights parse_band_weights(std::string_view text);

/// Deliveries taken from the broker and not started yet, one line per priority band, shared by the pool's
/// coroutines (on their own strands, so it is thread-safe). A free coroutine takes the band the preference picks.
/// One that finds nothing waits, and each delivery pushed wakes at most one waiting coroutine: at concurrency
/// 2,000 a broadcast would wake them all to start one job. Coroutines reserved for the high band take only its
/// jobs, so a high job finds one free even when long jobs of the other bands hold the rest.
class ReadyJobs {
  public:
    enum class Takes { any_band, high_band_only };

    /// One coroutine's place among those waiting; it belongs to that coroutine and outlives its take() calls.
    class Taker {
      public:
        Taker(const boost::asio::any_io_executor& executor, Takes takes) : takes_(takes), wake_(executor, 1) {}

      private:
        friend class ReadyJobs;
        enum class State { idle, waiting, woken };
        Takes takes_;
        State state_ = State::idle;
        boost::asio::experimental::concurrent_channel<void(boost::system::error_code)> wake_;
    };

    explicit ReadyJobs(BandPreference preference) : preference_(preference) {}

    /// Lines up a batch from the dispatcher; wakes a waiting coroutine for each delivery one can take.
    void push(amqp::DeliveryBatch batch);

    /// The next delivery for `taker`, waiting for one. Fails with operation_aborted when the wait is cancelled
    /// (through the awaiting coroutine's cancellation slot) and with channel_closed once close() was called.
    boost::asio::awaitable<std::tuple<boost::system::error_code, amqp::Delivery>> take(Taker& taker);

    /// Ends every wait and the ones to come; returns what nobody took, to be handed back.
    [[nodiscard]] std::vector<amqp::Delivery> close();

    /// Deliveries lined up in `band` (for tests).
    [[nodiscard]] std::size_t waiting(topology::Band band) const;

  private:
    /// Under the lock: a delivery `taker` may start, or nothing (it is then lined up to be woken).
    std::optional<amqp::Delivery> take_or_line_up(Taker& taker);
    std::optional<amqp::Delivery> pop_for(Takes takes);
    /// The coroutines waiting that take what `takes` says.
    std::deque<Taker*>& takers_of(Takes takes) noexcept;
    /// Under the lock: after its wait was cancelled, `taker` leaves the line, and a wake meant for it goes on.
    void abandon(Taker& taker);
    /// Under the lock: wakes sleeping coroutines while deliveries outnumber those already woken.
    void wake_takers();

    mutable std::mutex mutex_;
    BandPreference preference_;
    std::array<std::deque<amqp::Delivery>, topology::kBands.size()> lines_;
    std::deque<Taker*> any_band_takers_;
    std::deque<Taker*> high_band_takers_;
    std::size_t woken_ = 0;  ///< takers woken that have not looked again yet
    bool closed_ = false;
};

}  // namespace conveyor::worker
