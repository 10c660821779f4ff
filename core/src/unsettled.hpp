#pragma once

#include <cstdint>
#include <deque>
#include <vector>

namespace conveyor::amqp::detail {

/// Deliveries of one consumer channel not yet settled, in delivery-tag order. Tags on a channel are consecutive,
/// so an index is tag - first_tag. Acks are coalesced: a settled prefix goes out as one basic.ack with
/// multiple=true, which for a quorum queue is also one Raft command instead of many.
class Unsettled {
  public:
    enum class State : std::uint8_t { pending, acked, settled };

    /// Records the next delivery; false if its tag is not the next one, which the protocol rules out (a
    /// multiple=true ack would then be unsafe, so the caller must end the session).
    [[nodiscard]] bool delivered(std::uint64_t tag) {
        if (!started_) {
            started_ = true;
            first_tag_ = tag;
        } else if (tag != first_tag_ + states_.size()) {
            return false;
        }
        states_.push_back(State::pending);
        return true;
    }

    /// Marks a tag; false if it is not tracked (the caller then settles it on its own).
    bool mark(std::uint64_t tag, State state) {
        if (tag < first_tag_ || tag - first_tag_ >= states_.size() || states_[tag - first_tag_] != State::pending) {
            return false;
        }
        states_[tag - first_tag_] = state;
        if (state == State::acked) {
            acked_.push_back(tag);
        }
        return true;
    }

    /// Drops the settled prefix and returns the highest acked tag in it (0 if none); tags acked behind a
    /// pending one are returned in `stragglers`, to be acked one by one, so a slow job never holds others back.
    std::uint64_t take_settled_prefix(std::vector<std::uint64_t>& stragglers) {
        std::uint64_t highest_acked = 0;
        while (!states_.empty() && states_.front() != State::pending) {
            if (states_.front() == State::acked) {
                highest_acked = first_tag_;
            }
            states_.pop_front();
            ++first_tag_;
        }
        for (const auto tag : acked_) {
            if (tag >= first_tag_ && states_[tag - first_tag_] == State::acked) {
                states_[tag - first_tag_] = State::settled;
                stragglers.push_back(tag);
            }
        }
        acked_.clear();
        return highest_acked;
    }

    /// Forgets everything, for a new session (whose tags start again).
    void clear() {
        states_.clear();
        acked_.clear();
        started_ = false;
        first_tag_ = 0;
    }

  private:
    std::deque<State> states_;
    std::uint64_t first_tag_ = 0;
    bool started_ = false;
    std::vector<std::uint64_t> acked_;  ///< acked since the last take_settled_prefix
};

}  // namespace conveyor::amqp::detail
