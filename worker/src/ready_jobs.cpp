#include "ready_jobs.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/channel_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>
#include <stdexcept>

namespace conveyor::worker {
namespace asio = boost::asio;
using boost::system::error_code;

namespace {

constexpr std::size_t index_of(topology::Band band) noexcept {
    return static_cast<std::size_t>(band);
}

// A weight beyond this is no preference a person would mean, and keeps the credit arithmetic far from overflow.
constexpr unsigned kMaxWeight = 1'000'000;

}  // namespace

topology::Band BandPreference::pick(const std::array<bool, topology::kBands.size()>& waiting) {
    std::int64_t total = 0;
    std::optional<std::size_t> best;
    for (std::size_t band = 0; band < waiting.size(); ++band) {
        if (!waiting[band]) {
            continue;
        }
        credit_[band] += weights_[band];
        total += weights_[band];
        if (!best || credit_[band] > credit_[*best]) {
            best = band;
        }
    }
    credit_[best.value()] -= total;
    return topology::kBands[*best];
}

BandPreference::Weights parse_band_weights(std::string_view text) {
    BandPreference::Weights weights{};
    auto rest = text;
    for (std::size_t band = 0; band < weights.size(); ++band) {
        const auto colon = rest.find(':');
        const auto field = rest.substr(0, colon);
        const auto [end, error] = std::from_chars(field.data(), field.data() + field.size(), weights[band]);
        const bool last = band + 1 == weights.size();
        if (error != std::errc{} || end != field.data() + field.size() || weights[band] < 1 ||
            weights[band] > kMaxWeight || last != (colon == std::string_view::npos)) {
            throw std::invalid_argument(
                fmt::format("invalid priority weights '{}': expected high:normal:low, three whole numbers from 1 to "
                            "{} (e.g. 6:3:1)",
                            text, kMaxWeight));
        }
        rest = last ? std::string_view() : rest.substr(colon + 1);
    }
    return weights;
}

void ReadyJobs::push(amqp::DeliveryBatch batch) {
    const std::lock_guard lock(mutex_);
    for (auto& delivery : batch) {
        lines_[index_of(topology::band_of_queue(delivery.queue))].push_back(std::move(delivery));
    }
    wake_takers();
}

asio::awaitable<std::tuple<error_code, amqp::Delivery>> ReadyJobs::take(Taker& taker) {
    while (true) {
        {
            const std::lock_guard lock(mutex_);
            if (auto delivery = take_or_line_up(taker)) {
                co_return std::tuple{error_code{}, std::move(*delivery)};
            }
            if (closed_) {
                co_return std::tuple{error_code(asio::experimental::error::channel_closed), amqp::Delivery{}};
            }
        }
        auto [error] = co_await taker.wake_.async_receive(asio::as_tuple(asio::use_awaitable));
        if (error) {
            const std::lock_guard lock(mutex_);
            abandon(taker);
            co_return std::tuple{error_code(asio::error::operation_aborted), amqp::Delivery{}};
        }
    }
}

std::optional<amqp::Delivery> ReadyJobs::take_or_line_up(Taker& taker) {
    if (taker.state_ == Taker::State::woken) {
        --woken_;
    }
    taker.state_ = Taker::State::idle;
    auto delivery = pop_for(taker.takes_);
    if (delivery) {
        // Deliveries this one leaves may be waiting for a coroutine that was woken and then found another's taken.
        wake_takers();
        return delivery;
    }
    if (!closed_) {
        taker.state_ = Taker::State::waiting;
        auto& line = takers_of(taker.takes_);
        line.push_back(&taker);
        // A coroutine reserved for the high band, woken for a high job another took, leaves the other bands' jobs
        // to those that may take them: its wake counted against them until now.
        wake_takers();
    }
    return std::nullopt;
}

std::optional<amqp::Delivery> ReadyJobs::pop_for(Takes takes) {
    auto& high = lines_[index_of(topology::Band::high)];
    std::optional<topology::Band> band;
    if (takes == Takes::high_band_only) {
        band = high.empty() ? std::nullopt : std::optional(topology::Band::high);
    } else {
        std::array<bool, topology::kBands.size()> waiting{};
        std::transform(lines_.begin(), lines_.end(), waiting.begin(), [](const auto& line) { return !line.empty(); });
        if (std::find(waiting.begin(), waiting.end(), true) != waiting.end()) {
            band = preference_.pick(waiting);
        }
    }
    if (!band) {
        return std::nullopt;
    }
    auto& line = lines_[index_of(*band)];
    auto delivery = std::move(line.front());
    line.pop_front();
    return delivery;
}

std::deque<ReadyJobs::Taker*>& ReadyJobs::takers_of(Takes takes) noexcept {
    return takes == Takes::any_band ? any_band_takers_ : high_band_takers_;
}

void ReadyJobs::abandon(Taker& taker) {
    if (taker.state_ == Taker::State::waiting) {
        auto& line = takers_of(taker.takes_);
        line.erase(std::find(line.begin(), line.end(), &taker));
    } else if (taker.state_ == Taker::State::woken) {
        // The wake was sent under this lock: it is in the channel now, unless it completed the receive itself.
        taker.wake_.try_receive([](error_code) {});
        --woken_;
    }
    taker.state_ = Taker::State::idle;
    wake_takers();
}

void ReadyJobs::wake_takers() {
    std::size_t lined_up = 0;
    for (const auto& line : lines_) {
        lined_up += line.size();
    }
    auto high_left = lines_[index_of(topology::Band::high)].size();
    while (closed_ || lined_up > woken_) {
        std::deque<Taker*>* line = nullptr;
        if ((high_left > 0 || closed_) && !high_band_takers_.empty()) {
            line = &high_band_takers_;
            high_left -= high_left > 0 ? 1 : 0;
        } else if (!any_band_takers_.empty()) {
            line = &any_band_takers_;
        } else {
            return;
        }
        auto* taker = line->front();
        line->pop_front();
        taker->state_ = Taker::State::woken;
        ++woken_;
        taker->wake_.try_send(error_code{});
    }
}

std::vector<amqp::Delivery> ReadyJobs::close() {
    const std::lock_guard lock(mutex_);
    closed_ = true;
    std::vector<amqp::Delivery> left;
    for (auto& line : lines_) {
        std::move(line.begin(), line.end(), std::back_inserter(left));
        line.clear();
    }
    wake_takers();
    return left;
}

std::size_t ReadyJobs::waiting(topology::Band band) const {
    const std::lock_guard lock(mutex_);
    return lines_[index_of(band)].size();
}

}  // namespace conveyor::worker
