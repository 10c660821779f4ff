#include "concurrency.hpp"

#include <prometheus/gauge.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/serialize.hpp>
#include <unordered_set>

#include "conveyor/core/dead_letters.hpp"
#include "conveyor/core/header_json.hpp"
#include "conveyor/core/topology.hpp"
#include "conveyor/core/utf8.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace {

// Longest key kept: a longer one is cut (keys that share their first 255 bytes share a limit: stricter, never looser).
constexpr std::size_t kMaxKeyBytes = 255;
// Requests per statement.
constexpr std::size_t kMaxBatch = 500;
// Promoted jobs published per transaction.
constexpr int kPublishChunk = 500;

std::string seconds(std::chrono::seconds duration) {
    return fmt::format("{} seconds", duration.count());
}

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
    std::string key;
    const auto value = envelope.payload.at_pointer(limits->concurrency->key_pointer);
    if (value.error() == simdjson::SUCCESS) {
        std::string_view text;
        key = value.get(text) == simdjson::SUCCESS ? std::string(text) : simdjson::minify(value.value_unsafe());
    }
    if (key.size() > kMaxKeyBytes) {
        key.resize(kMaxKeyBytes);
    }
    return ConcurrencyPlace{envelope.type, utf8::postgres_text(key), limits->concurrency->limit};
}

asio::awaitable<std::optional<ConcurrencyLimits::Verdict>> ConcurrencyLimits::acquire(const ConcurrencyPlace& place,
                                                                                      const std::string& job_id,
                                                                                      const JobLogger& log) {
    bool granted = false;
    auto take = [&]() -> asio::awaitable<void> {
        SlotRequest request{place, job_id};
        granted = co_await acquires_.call(std::move(request));
    };
    const bool checked = co_await database_.run_when_usable(take, draining_, log);
    if (!checked) {
        co_return std::nullopt;
    }
    co_return granted ? Verdict::granted : Verdict::wait;
}

asio::awaitable<bool> ConcurrencyLimits::wait_in_line(const ConcurrencyPlace& place, const amqp::Delivery& delivery,
                                                      const JobLogger& log) {
    LineRequest request{place, delivery.message.properties.message_id,
                        boost::json::serialize(amqp::properties_to_json(delivery.message.properties)),
                        pg::bytea_literal(delivery.message.body)};
    auto store = [&]() -> asio::awaitable<void> { co_await waits_.call(request); };
    co_return co_await database_.run_when_usable(store, draining_, log);
}

void ConcurrencyLimits::release(const ConcurrencyPlace& place, const std::string& job_id) {
    {
        const std::lock_guard lock(releases_mutex_);
        releases_.push_back({place, job_id});
    }
    releases_arrived_.notify_all();
}

asio::awaitable<void> ConcurrencyLimits::run() {
    auto acquiring = acquires_.serve([this](std::vector<SlotRequest>& batch) { return acquire_batch(batch); });
    auto waiting = waits_.serve([this](std::vector<LineRequest>& batch) { return wait_batch(batch); });
    auto releasing = serve_releases();
    auto renewing = keep_leases();
    auto publishing = promote_and_publish();
    co_await (std::move(acquiring) && std::move(waiting) && std::move(releasing) && std::move(renewing) &&
              std::move(publishing));
}

asio::awaitable<std::vector<bool>> ConcurrencyLimits::acquire_batch(std::vector<SlotRequest>& requests) {
    const Columns columns(requests);
    const auto granted = co_await pool_.query(
        "SELECT conveyor.acquire_concurrency_slots($1::text[], $2::text[], $3::text[], $4::integer[], $5, "
        "$6::interval)",
        pg::text_array(columns.types), pg::text_array(columns.keys), pg::text_array(columns.job_ids),
        pg::text_array(columns.limits), settings_.holder, seconds(settings_.lease));
    std::unordered_set<std::string_view> ids;
    for (int row = 0; row < granted.rows(); ++row) {
        ids.insert(granted.text(row, 0));
    }
    std::vector<bool> replies;
    replies.reserve(requests.size());
    for (const auto& request : requests) {
        replies.push_back(ids.contains(request.job_id));
    }
    co_return replies;
}

asio::awaitable<std::vector<bool>> ConcurrencyLimits::wait_batch(std::vector<LineRequest>& requests) {
    const Columns columns(requests);
    std::vector<std::string> properties;
    std::vector<std::string> bodies;
    for (auto& request : requests) {
        properties.push_back(std::move(request.properties));
        bodies.push_back(std::move(request.body));
    }
    const auto stored = co_await pool_.query(
        "SELECT conveyor.wait_for_concurrency_slots($1::text[], $2::text[], $3::text[], $4::integer[], "
        "$5::jsonb[], $6::bytea[], $7::interval)",
        pg::text_array(columns.types), pg::text_array(columns.keys), pg::text_array(columns.job_ids),
        pg::text_array(columns.limits), pg::text_array(properties), pg::text_array(bodies), seconds(settings_.promise));
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
                pg::text_array(columns.limits), settings_.holder, seconds(settings_.promise));
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
                settings_.holder, seconds(settings_.lease));
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
            while (co_await publish_promoted()) {
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
                             pg::text_array(types), pg::text_array(limits), seconds(settings_.promise));
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

asio::awaitable<bool> ConcurrencyLimits::publish_promoted() {
    auto transaction = co_await pool_.begin();
    const auto rows = co_await transaction.query(
        "SELECT id, job_type, properties::text, encode(body, 'hex') "
        "FROM conveyor.concurrency_waiting WHERE released_at IS NOT NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        kPublishChunk);
    if (rows.rows() == 0) {
        co_return false;
    }
    std::vector<amqp::Message> messages;
    for (int row = 0; row < rows.rows(); ++row) {
        amqp::Message message;
        message.exchange = topology::kJobsExchange;
        message.routing_key = rows.text(row, 1);
        message.properties = amqp::properties_from_json(rows.text(row, 2));
        message.body = dead_letters::decode_body(rows.text(row, 3));
        messages.push_back(std::move(message));
    }
    const auto errors = co_await amqp::publish_all(publisher_, std::move(messages), settings_.publish_timeout);
    std::vector<std::string> ids;
    std::string failure;
    for (int row = 0; row < rows.rows(); ++row) {
        if (errors[static_cast<std::size_t>(row)]) {
            failure = errors[static_cast<std::size_t>(row)].message();
            continue;
        }
        ids.emplace_back(rows.text(row, 0));
    }
    co_await transaction.query("DELETE FROM conveyor.concurrency_waiting WHERE id = ANY($1::bigint[])",
                               pg::text_array(ids));
    co_await transaction.commit();
    if (!failure.empty()) {
        spdlog::warn("concurrency limits: could not publish {} promoted jobs ({}); they stay in line",
                     static_cast<std::size_t>(rows.rows()) - ids.size(), failure);
        co_return false;
    }
    co_return true;
}

}  // namespace conveyor::worker
