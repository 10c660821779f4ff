#include "concurrency.hpp"

#include <prometheus/gauge.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "conveyor/core/task_group.hpp"
#include "waiting_line.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace {

// Requests per statement.
constexpr std::size_t kMaxBatch = 500;

/// The columns of a batch: one text array per field.
template <typename Request>
struct Columns {
    std::vector<std::string> types;
    std::vector<std::string> keys;
    std::vector<std::string> job_ids;
    std::vector<std::string> limits;

    explicit Columns(const std::vector<Request>& requests) {
        for (const auto& request : requests) {
            types.push_back(request.place.type);
            keys.push_back(request.place.key);
            job_ids.push_back(request.job_id);
            limits.push_back(std::to_string(request.place.limit));
        }
    }
};

}  // namespace

ConcurrencyLimits::ConcurrencyLimits(pg::Pool& pool, amqp::Connection& publisher, DatabaseHealth& database,
                                     const FlowLimits& flow, const std::atomic<bool>& draining, Settings settings,
                                     Gauges gauges)
    : pool_(pool),
      publisher_(publisher),
      database_(database),
      flow_(flow),
      draining_(draining),
      settings_(std::move(settings)),
      gauges_(gauges),
      acquires_(kMaxBatch),
      waits_(kMaxBatch) {}

std::optional<ConcurrencyPlace> ConcurrencyLimits::place_of(const Envelope& envelope) const {
    const auto config = flow_.current();
    const auto* limits = config->find(envelope.type);
    if (limits == nullptr || !limits->concurrency) {
        return std::nullopt;
    }
    return ConcurrencyPlace{envelope.type, limit_key(envelope, limits->concurrency->key_pointer),
                            limits->concurrency->limit};
}

asio::awaitable<std::optional<ConcurrencyLimits::Verdict>> ConcurrencyLimits::acquire(const ConcurrencyPlace& place,
                                                                                      const std::string& job_id,
                                                                                      const JobLogger& log) {
    const SlotRequest request{place, job_id};
    const auto granted = co_await call_when_usable(acquires_, request, database_, draining_, log);
    if (!granted) {
        co_return std::nullopt;
    }
    co_return *granted ? Verdict::granted : Verdict::wait;
}

asio::awaitable<bool> ConcurrencyLimits::wait_in_line(const ConcurrencyPlace& place, const amqp::Delivery& delivery,
                                                      const JobLogger& log) {
    const LineRequest request{line_entry(delivery), place};
    const auto stored = co_await call_when_usable(waits_, request, database_, draining_, log);
    co_return stored.has_value();
}

void ConcurrencyLimits::release(const ConcurrencyPlace& place, const std::string& job_id) {
    {
        const std::lock_guard lock(releases_mutex_);
        releases_.push_back({place, job_id});
    }
    releases_arrived_.notify_all();
}

asio::awaitable<void> ConcurrencyLimits::run() {
    std::vector<asio::awaitable<void>> loops;
    loops.push_back(acquires_.serve([this](std::vector<SlotRequest>& batch) { return acquire_batch(batch); }));
    loops.push_back(waits_.serve([this](std::vector<LineRequest>& batch) { return wait_batch(batch); }));
    loops.push_back(serve_releases());
    loops.push_back(keep_leases());
    loops.push_back(promote_and_publish());
    co_await run_side_by_side(std::move(loops));
}

asio::awaitable<std::vector<bool>> ConcurrencyLimits::acquire_batch(std::vector<SlotRequest>& requests) {
    const Columns columns(requests);
    const auto granted = co_await pool_.query(
        "SELECT conveyor.acquire_concurrency_slots($1::text[], $2::text[], $3::text[], $4::integer[], $5, "
        "$6::interval)",
        pg::text_array(columns.types), pg::text_array(columns.keys), pg::text_array(columns.job_ids),
        pg::text_array(columns.limits), settings_.holder, pg_interval(settings_.lease));
    co_return granted_replies(granted, requests);
}

asio::awaitable<std::vector<bool>> ConcurrencyLimits::wait_batch(std::vector<LineRequest>& requests) {
    const Columns columns(requests);
    const LineColumns messages(requests);
    const auto stored = co_await pool_.query(
        "SELECT conveyor.wait_for_concurrency_slots($1::text[], $2::text[], $3::text[], $4::integer[], "
        "$5::jsonb[], $6::bytea[], $7::interval)",
        pg::text_array(columns.types), pg::text_array(columns.keys), pg::text_array(columns.job_ids),
        pg::text_array(columns.limits), pg::text_array(messages.properties), pg::text_array(messages.bodies),
        pg_interval(settings_.promise));
    promoted(stored.integer(0, 0));
    co_return std::vector<bool>(requests.size(), true);
}

asio::awaitable<void> ConcurrencyLimits::serve_releases() {
    const std::atomic<bool> never{false};
    while (true) {
        auto has_releases = [this] {
            const std::lock_guard lock(releases_mutex_);
            return !releases_.empty();
        };
        co_await releases_arrived_.wait(has_releases);
        std::vector<SlotRequest> batch;
        {
            const std::lock_guard lock(releases_mutex_);
            const auto taken = std::min(releases_.size(), kMaxBatch);
            batch.assign(std::make_move_iterator(releases_.begin()),
                         std::make_move_iterator(releases_.begin() + static_cast<std::ptrdiff_t>(taken)));
            releases_.erase(releases_.begin(), releases_.begin() + static_cast<std::ptrdiff_t>(taken));
        }
        const Columns columns(batch);
        std::string failure;
        try {
            const auto released = co_await pool_.query(
                "SELECT conveyor.release_concurrency_slots($1::text[], $2::text[], $3::text[], $4::integer[], $5, "
                "$6::interval)",
                pg::text_array(columns.types), pg::text_array(columns.keys), pg::text_array(columns.job_ids),
                pg::text_array(columns.limits), settings_.holder, pg_interval(settings_.promise));
            promoted(released.integer(0, 0));
        } catch (const pg::Error& e) {
            failure = e.what();
        }
        if (!failure.empty()) {
            // Kept for when the database is back; meanwhile the places count until their lease runs out.
            database_.lost(failure);
            {
                const std::lock_guard lock(releases_mutex_);
                releases_.insert(releases_.begin(), std::make_move_iterator(batch.begin()),
                                 std::make_move_iterator(batch.end()));
            }
            co_await database_.wait_until_usable(never);
        }
    }
}

asio::awaitable<void> ConcurrencyLimits::keep_leases() {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    while (true) {
        timer.expires_after(settings_.lease / 3);
        co_await timer.async_wait(asio::use_awaitable);
        try {
            co_await pool_.query(
                "UPDATE conveyor.concurrency_slots SET expires_at = now() + $2::interval WHERE holder = $1",
                settings_.holder, pg_interval(settings_.lease));
        } catch (const pg::Error& e) {
            spdlog::warn(
                "cannot renew this worker's concurrency places ({}); they free themselves {} s after the "
                "last renewal",
                e.what(), settings_.lease.count());
        }
    }
}

void ConcurrencyLimits::promoted(std::int64_t count) {
    if (count > 0) {
        promotions_ = true;
        promotions_arrived_.notify_all();
    }
}

asio::awaitable<void> ConcurrencyLimits::promote_and_publish() {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto next_sweep = std::chrono::steady_clock::now();
    std::string last_failure;
    while (true) {
        timer.expires_at(next_sweep);
        auto promotion_pending = [this] { return promotions_.load(); };
        auto promotion = promotions_arrived_.wait(promotion_pending);
        auto tick = timer.async_wait(asio::as_tuple(asio::use_awaitable));
        co_await (std::move(promotion) || std::move(tick));
        promotions_ = false;
        std::string failure;
        try {
            if (std::chrono::steady_clock::now() >= next_sweep) {
                next_sweep = std::chrono::steady_clock::now() + settings_.sweep_interval;
                co_await sweep();
            }
            while (co_await waiting_line::publish_released(pool_, publisher_, "conveyor.concurrency_waiting",
                                                           "concurrency", settings_.publish_timeout)) {
            }
        } catch (const pg::Error& e) {
            failure = e.what();
        }
        if (!failure.empty() && failure != last_failure) {
            spdlog::warn("concurrency limits: cannot promote or publish waiting jobs ({}); trying again", failure);
        }
        last_failure = failure;
    }
}

asio::awaitable<void> ConcurrencyLimits::sweep() {
    if (!flow_.known()) {
        co_return;
    }
    const auto config = flow_.current();
    std::vector<std::string> types;
    std::vector<std::string> limits;
    for (const auto& [type, settings] : config->jobs) {
        if (settings.concurrency) {
            types.push_back(type);
            limits.push_back(std::to_string(settings.concurrency->limit));
        }
    }
    const auto promoted_now =
        co_await pool_.query("SELECT conveyor.promote_concurrency_waiting($1::text[], $2::integer[], $3::interval)",
                             pg::text_array(types), pg::text_array(limits), pg_interval(settings_.promise));
    promoted(promoted_now.integer(0, 0));
    const auto unlimited = co_await pool_.query(
        "UPDATE conveyor.concurrency_waiting SET released_at = now() WHERE released_at IS NULL "
        "AND job_type <> ALL ($1::text[])",
        pg::text_array(types));
    promoted(unlimited.affected());
    co_await pool_.query("DELETE FROM conveyor.concurrency_slots WHERE expires_at < now() - interval '10 minutes'");
    const auto waiting = co_await pool_.query(
        "SELECT count(*), count(DISTINCT (job_type, concurrency_key)) FROM conveyor.concurrency_waiting "
        "WHERE released_at IS NULL");
    gauges_.waiting_jobs.Set(static_cast<double>(waiting.integer(0, 0)));
    gauges_.waiting_keys.Set(static_cast<double>(waiting.integer(0, 1)));
}

}  // namespace conveyor::worker
