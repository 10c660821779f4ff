#include "rate.hpp"

#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <spdlog/spdlog.h>

#include <algorithm>
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
// Jobs one bucket releases per pass: more than any bucket gains in a release interval.
constexpr int kMostReleasedPerPass = 5000;
// The shortest wait between releases while jobs wait: a fast bucket gains its next token within a millisecond.
constexpr std::chrono::milliseconds kShortestWait{2};

/// The bucket columns of a batch: one text array per field.
template <typename Request>
struct BucketColumns {
    std::vector<std::string> types;
    std::vector<std::string> keys;
    std::vector<std::string> job_ids;
    std::vector<std::string> rates;
    std::vector<std::string> bursts;

    explicit BucketColumns(const std::vector<Request>& requests) {
        for (const auto& request : requests) {
            types.push_back(request.bucket.type);
            keys.push_back(request.bucket.key);
            job_ids.push_back(request.job_id);
            rates.push_back(fmt::format("{}", request.bucket.per_second));
            bursts.push_back(std::to_string(request.bucket.burst));
        }
    }
};

}  // namespace

RateLimits::RateLimits(pg::Pool& pool, amqp::Connection& publisher, DatabaseHealth& database, const FlowLimits& flow,
                       const std::atomic<bool>& draining, Settings settings, Gauges gauges)
    : pool_(pool),
      publisher_(publisher),
      database_(database),
      flow_(flow),
      draining_(draining),
      settings_(settings),
      gauges_(gauges),
      acquires_(kMaxBatch),
      waits_(kMaxBatch) {}

std::optional<RateBucket> RateLimits::bucket_of(const Envelope& envelope) const {
    const auto config = flow_.current();
    const auto* limits = config->find(envelope.type);
    if (limits == nullptr || !limits->rate) {
        return std::nullopt;
    }
    const auto& rate = *limits->rate;
    return RateBucket{envelope.type, rate.key_pointer.empty() ? std::string() : limit_key(envelope, rate.key_pointer),
                      rate.per_second, rate.burst};
}

asio::awaitable<std::optional<RateLimits::Verdict>> RateLimits::acquire(const RateBucket& bucket,
                                                                        const std::string& job_id,
                                                                        const JobLogger& log) {
    const TokenRequest request{bucket, job_id};
    const auto granted = co_await call_when_usable(acquires_, request, database_, draining_, log);
    if (!granted) {
        co_return std::nullopt;
    }
    co_return *granted ? Verdict::granted : Verdict::wait;
}

asio::awaitable<bool> RateLimits::wait_in_line(const RateBucket& bucket, const amqp::Delivery& delivery,
                                               const JobLogger& log) {
    const LineRequest request{line_entry(delivery), bucket};
    const auto stored = co_await call_when_usable(waits_, request, database_, draining_, log);
    co_return stored.has_value();
}

asio::awaitable<void> RateLimits::run() {
    std::vector<asio::awaitable<void>> loops;
    loops.push_back(acquires_.serve([this](std::vector<TokenRequest>& batch) { return acquire_batch(batch); }));
    loops.push_back(waits_.serve([this](std::vector<LineRequest>& batch) { return wait_batch(batch); }));
    loops.push_back(release_and_publish());
    co_await run_side_by_side(std::move(loops));
}

asio::awaitable<std::vector<bool>> RateLimits::acquire_batch(std::vector<TokenRequest>& requests) {
    const BucketColumns columns(requests);
    const auto granted = co_await pool_.query(
        "SELECT conveyor.acquire_rate_tokens($1::text[], $2::text[], $3::text[], $4::double precision[], "
        "$5::integer[])",
        pg::text_array(columns.types), pg::text_array(columns.keys), pg::text_array(columns.job_ids),
        pg::text_array(columns.rates), pg::text_array(columns.bursts));
    co_return granted_replies(granted, requests);
}

asio::awaitable<std::vector<bool>> RateLimits::wait_batch(std::vector<LineRequest>& requests) {
    const BucketColumns columns(requests);
    const LineColumns messages(requests);
    // A job already in line (a second copy of it) is not added twice.
    co_await pool_.query(
        "INSERT INTO conveyor.rate_waiting (job_type, rate_key, job_id, properties, body) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::bytea[]) "
        "ON CONFLICT (job_type, rate_key, job_id) DO NOTHING",
        pg::text_array(columns.types), pg::text_array(columns.keys), pg::text_array(columns.job_ids),
        pg::text_array(messages.properties), pg::text_array(messages.bodies));
    stored_ = true;
    lines_arrived_.notify_all();
    co_return std::vector<bool>(requests.size(), true);
}

RateLimits::LimitColumns RateLimits::limits_in_force() const {
    LimitColumns limits;
    for (const auto& [type, settings] : flow_.current()->jobs) {
        if (settings.rate) {
            limits.types.push_back(type);
            limits.rates.push_back(fmt::format("{}", settings.rate->per_second));
            limits.bursts.push_back(std::to_string(settings.rate->burst));
            limits.keyed.push_back(!settings.rate->key_pointer.empty());
        }
    }
    return limits;
}

asio::awaitable<void> RateLimits::release_and_publish() {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto next_sweep = std::chrono::steady_clock::now();
    Released last;
    std::string last_failure;
    while (true) {
        // While jobs wait, every release interval or when a bucket gains its next token if sooner; otherwise at the
        // next sweep, or when this worker stores one.
        timer.expires_after(last.lines_open ? std::clamp(last.next_token_in, kShortestWait, settings_.release_interval)
                                            : std::chrono::duration_cast<std::chrono::milliseconds>(
                                                  next_sweep - std::chrono::steady_clock::now()));
        auto stored = [this] { return stored_.exchange(false); };
        auto line_stored = lines_arrived_.wait(stored);
        auto tick = timer.async_wait(asio::as_tuple(asio::use_awaitable));
        co_await (std::move(line_stored) || std::move(tick));
        std::string failure;
        try {
            const auto limits = limits_in_force();
            bool swept_lines_open = false;
            if (flow_.known() && std::chrono::steady_clock::now() >= next_sweep) {
                next_sweep = std::chrono::steady_clock::now() + settings_.sweep_interval;
                swept_lines_open = co_await sweep(limits) > 0;
            }
            last = co_await release(limits);
            last.lines_open = last.lines_open || swept_lines_open;
        } catch (const pg::Error& e) {
            failure = e.what();
        }
        if (!failure.empty() && failure != last_failure) {
            spdlog::warn("rate limits: cannot release or publish waiting jobs ({}); trying again", failure);
        }
        last_failure = failure;
    }
}

asio::awaitable<RateLimits::Released> RateLimits::release(const LimitColumns& limits) {
    Released outcome;
    if (!limits.types.empty()) {
        const auto result = co_await pool_.query(
            "SELECT released, next_token_in FROM conveyor.release_rate_waiting($1::text[], $2::double precision[], "
            "$3::integer[], $4::interval, $5)",
            pg::text_array(limits.types), pg::text_array(limits.rates), pg::text_array(limits.bursts),
            pg_interval(settings_.pass), kMostReleasedPerPass);
        outcome.lines_open = result.integer(0, 0) > 0;
        if (!result.is_null(0, 1)) {
            outcome.lines_open = true;
            outcome.next_token_in = std::chrono::ceil<std::chrono::milliseconds>(
                std::chrono::duration<double>(std::stod(std::string(result.text(0, 1)))));
        }
    }
    while (co_await waiting_line::publish_released(pool_, publisher_, "conveyor.rate_waiting", "true", "rate",
                                                   settings_.publish_timeout)) {
        outcome.lines_open = true;
    }
    co_return outcome;
}

asio::awaitable<std::int64_t> RateLimits::sweep(const LimitColumns& limits) {
    co_await pool_.query(
        "UPDATE conveyor.rate_waiting SET released_at = now() WHERE released_at IS NULL "
        "AND job_type <> ALL ($1::text[])",
        pg::text_array(limits.types));
    // Well after they expired: a pass just expiring may still be looked at by a worker's token request.
    co_await pool_.query("DELETE FROM conveyor.rate_passes WHERE expires_at < now() - interval '1 minute'");
    // A bucket idle long enough to be full again is as good as none; one of a type no longer limited is gone.
    co_await pool_.query(
        "DELETE FROM conveyor.rate_buckets b WHERE NOT EXISTS ("
        "SELECT 1 FROM unnest($1::text[], $2::double precision[], $3::integer[]) AS l(job_type, rate, burst) "
        "WHERE l.job_type = b.job_type "
        "AND b.refilled_at > now() - make_interval(secs => greatest(600, l.burst / l.rate)))",
        pg::text_array(limits.types), pg::text_array(limits.rates), pg::text_array(limits.bursts));
    // As take_rate_tokens counts them: live passes hold part of the burst.
    const auto tokens = co_await pool_.query(
        "SELECT b.job_type, sum(greatest(0, floor(least(l.burst - (SELECT count(*) FROM conveyor.rate_passes p "
        "WHERE p.job_type = b.job_type AND p.rate_key = b.rate_key AND p.expires_at > now()), b.tokens + l.rate * "
        "extract(epoch FROM clock_timestamp() - b.refilled_at)::double precision))))::bigint "
        "FROM conveyor.rate_buckets b "
        "JOIN unnest($1::text[], $2::double precision[], $3::integer[]) AS l(job_type, rate, burst) "
        "ON l.job_type = b.job_type GROUP BY b.job_type",
        pg::text_array(limits.types), pg::text_array(limits.rates), pg::text_array(limits.bursts));
    set_token_gauges(limits, tokens);
    const auto waiting = co_await pool_.query(
        "SELECT count(*), count(DISTINCT (job_type, rate_key)) FROM conveyor.rate_waiting WHERE released_at IS NULL");
    gauges_.waiting_jobs.Set(static_cast<double>(waiting.integer(0, 0)));
    gauges_.waiting_keys.Set(static_cast<double>(waiting.integer(0, 1)));
    co_return waiting.integer(0, 0);
}

void RateLimits::set_token_gauges(const LimitColumns& limits, const pg::Result& tokens) {
    std::map<std::string, double, std::less<>> available;
    for (int row = 0; row < tokens.rows(); ++row) {
        available.emplace(tokens.text(row, 0), static_cast<double>(tokens.integer(row, 1)));
    }
    std::map<std::string, prometheus::Gauge*, std::less<>> gauges;
    for (std::size_t n = 0; n < limits.types.size(); ++n) {
        const auto& type = limits.types[n];
        const auto known = token_gauges_.find(type);
        auto* gauge = known != token_gauges_.end() ? known->second : &gauges_.tokens.Add({{"type", type}});
        const auto found = available.find(type);
        // A type without a bucket yet: a whole one if it has one bucket, none counted if it has one per key.
        const auto unused = limits.keyed[n] ? 0.0 : std::stod(limits.bursts[n]);
        gauge->Set(found != available.end() ? found->second : unused);
        gauges.emplace(type, gauge);
    }
    for (const auto& [type, gauge] : token_gauges_) {
        if (!gauges.contains(type)) {
            gauges_.tokens.Remove(gauge);
        }
    }
    token_gauges_ = std::move(gauges);
}

}  // namespace conveyor::worker
