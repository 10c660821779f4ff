#include "concurrency.hpp"

#include <prometheus/gauge.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <limits>
#include <set>
#include <utility>

#include "conveyor/core/task_group.hpp"
#include "conveyor/core/topology.hpp"
#include "waiting_line.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace {

// Requests per statement.
constexpr std::size_t kMaxBatch = 500;
// How often this worker gives back the places it kept unused, and looks which of its keys have a line.
constexpr auto kTendInterval = std::chrono::milliseconds(100);

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

std::vector<std::string> ids_as_text(const std::vector<std::int64_t>& ids) {
    std::vector<std::string> texts;
    texts.reserve(ids.size());
    for (const auto id : ids) {
        texts.push_back(std::to_string(id));
    }
    return texts;
}

/// A job promoted from its line and taken by this worker, as a delivery from its band's queue: a redelivery if a
/// worker took it before (and died).
amqp::Delivery taken_delivery(const pg::Result& rows, int row) {
    amqp::Delivery delivery;
    delivery.message = waiting_line::stored_message(rows, row);
    const auto& message = delivery.message;
    const auto band =
        topology::parse_band(amqp::find_text_header(message.properties.headers, topology::kPriorityHeader));
    const std::string_view type = message.routing_key;
    delivery.queue = topology::queue_name(type.substr(0, type.find('.')), band.value_or(topology::Band::normal));
    delivery.redelivered = rows.integer(row, 4) > 1;
    delivery.stored_id = rows.integer(row, 0);
    return delivery;
}

}  // namespace

ConcurrencyLimits::ConcurrencyLimits(pg::Pool& pool, amqp::Connection& publisher, DatabaseHealth& database,
                                     const FlowLimits& flow, const std::atomic<bool>& draining, Settings settings,
                                     Gauges gauges, TakenJobs taken_jobs)
    : pool_(pool),
      publisher_(publisher),
      database_(database),
      flow_(flow),
      draining_(draining),
      settings_(std::move(settings)),
      gauges_(gauges),
      places_(settings_.pool),
      acquires_(kMaxBatch),
      waits_(kMaxBatch),
      taken_jobs_(std::move(taken_jobs)) {}

std::optional<ConcurrencyPlace> ConcurrencyLimits::place_of(const Envelope& envelope) const {
    const auto config = flow_.current();
    const auto* limits = config->find(envelope.type);
    if (limits == nullptr || !limits->concurrency) {
        return std::nullopt;
    }
    return ConcurrencyPlace{
        envelope.type, limit_key(envelope, limits->concurrency->key_pointer), limits->concurrency->limit, {}};
}

asio::awaitable<std::optional<ConcurrencyLimits::Verdict>> ConcurrencyLimits::acquire(ConcurrencyPlace& place,
                                                                                      const std::string& job_id,
                                                                                      bool promised,
                                                                                      const JobLogger& log) {
    if (!promised && places_.take_free(place)) {
        co_return Verdict::granted;
    }
    const SlotRequest request{place, job_id};
    const auto answer = co_await call_when_usable(acquires_, request, database_, draining_, log);
    if (!answer) {
        co_return std::nullopt;
    }
    if (*answer == Answer::granted) {
        place.label = job_id;
        places_.add(place);
        co_return Verdict::granted;
    }
    if (*answer == Answer::full && co_await places_.wait_for_place(place, settings_.patience)) {
        co_return Verdict::granted;
    }
    // Into the line: a place this worker keeps for the key belongs to the line from now on.
    free_in_database(places_.contend({place.type, place.key}));
    co_return Verdict::wait;
}

asio::awaitable<bool> ConcurrencyLimits::wait_in_line(const ConcurrencyPlace& place, const amqp::Delivery& delivery,
                                                      const JobLogger& log) {
    const LineRequest request{line_entry(delivery), place};
    const auto stored = co_await call_when_usable(waits_, request, database_, draining_, log);
    co_return stored.has_value();
}

void ConcurrencyLimits::release(const ConcurrencyPlace& place, const std::string& job_id) {
    std::vector<ConcurrencyPlace> to_free;
    if (place.label.empty()) {
        to_free.push_back(place);
        to_free.back().label = job_id;
    } else if (auto given_back = places_.put_back(place)) {
        to_free.push_back(std::move(*given_back));
    }
    free_in_database(std::move(to_free));
}

void ConcurrencyLimits::free_in_database(std::vector<ConcurrencyPlace> places) {
    if (places.empty()) {
        return;
    }
    {
        const std::lock_guard lock(releases_mutex_);
        for (auto& place : places) {
            auto label = place.label;
            chores_.releases.push_back({std::move(place), std::move(label)});
        }
    }
    releases_arrived_.notify_all();
}

std::optional<ConcurrencyPlace> ConcurrencyLimits::take_claimed(std::int64_t line_id) {
    const std::lock_guard lock(claimed_mutex_);
    auto entry = claimed_.find(line_id);
    if (entry == claimed_.end()) {
        return std::nullopt;
    }
    auto place = std::move(entry->second);
    claimed_.erase(entry);
    return place;
}

void ConcurrencyLimits::settle_taken(std::int64_t line_id, Taken how) {
    // Cancelled, paused, deduplicated or refused before it took its place, or handed back unstarted.
    if (auto unused = take_claimed(line_id)) {
        release(*unused, unused->label);
    }
    {
        const std::lock_guard lock(releases_mutex_);
        (how == Taken::done ? chores_.taken_done : chores_.taken_back).push_back(line_id);
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
    loops.push_back(tend_places());
    co_await run_side_by_side(std::move(loops));
}

asio::awaitable<std::vector<ConcurrencyLimits::Answer>> ConcurrencyLimits::acquire_batch(
    std::vector<SlotRequest>& requests) {
    const Columns columns(requests);
    const auto verdicts = co_await pool_.query(
        "SELECT arrival, verdict FROM conveyor.take_concurrency_places($1::text[], $2::text[], $3::text[], "
        "$4::integer[], $5, $6::interval)",
        pg::text_array(columns.types), pg::text_array(columns.keys), pg::text_array(columns.job_ids),
        pg::text_array(columns.limits), settings_.holder, pg_interval(settings_.lease));
    // One verdict per request, by its position in the batch (from 1).
    std::vector<Answer> replies(requests.size(), Answer::line);
    for (int row = 0; row < verdicts.rows(); ++row) {
        const auto position = static_cast<std::size_t>(verdicts.integer(row, 0)) - 1;
        const auto verdict = verdicts.text(row, 1);
        if (position < replies.size()) {
            replies[position] = verdict == "granted" ? Answer::granted
                                : verdict == "full"  ? Answer::full
                                                     : Answer::line;
        }
    }
    co_return replies;
}

asio::awaitable<std::vector<bool>> ConcurrencyLimits::wait_batch(std::vector<LineRequest>& requests) {
    const Columns columns(requests);
    const LineColumns messages(requests);
    const bool take = !draining_;
    const auto promoted_jobs = co_await pool_.query(
        "SELECT line_id, job_type, properties, encode(body, 'hex'), claims, concurrency_key, job_id FROM "
        "conveyor.line_up_for_concurrency_places($1::text[], $2::text[], $3::text[], $4::integer[], $5::jsonb[], "
        "$6::bytea[], $7, $8::boolean, $9::interval, $10::interval)",
        pg::text_array(columns.types), pg::text_array(columns.keys), pg::text_array(columns.job_ids),
        pg::text_array(columns.limits), pg::text_array(messages.properties), pg::text_array(messages.bodies),
        settings_.holder, take ? "true" : "false", pg_interval(settings_.promise), pg_interval(settings_.lease));
    take_promoted(promoted_jobs, take);
    co_return std::vector<bool>(requests.size(), true);
}

asio::awaitable<void> ConcurrencyLimits::serve_releases() {
    const std::atomic<bool> never{false};
    while (true) {
        auto has_chores = [this] {
            const std::lock_guard lock(releases_mutex_);
            return !chores_.empty();
        };
        co_await releases_arrived_.wait(has_chores);
        auto chores = take_chores(kMaxBatch);
        std::string failure;
        try {
            co_await do_chores(chores, !draining_);
        } catch (const pg::Error& e) {
            failure = e.what();
        }
        if (!failure.empty()) {
            // Kept for when the database is back (doing them twice changes nothing); meanwhile the places count
            // until their lease runs out.
            database_.lost(failure);
            return_chores(std::move(chores));
            co_await database_.wait_until_usable(never);
        }
    }
}

ConcurrencyLimits::Chores ConcurrencyLimits::take_chores(std::size_t most) {
    const std::lock_guard lock(releases_mutex_);
    if (chores_.releases.size() <= most) {
        return std::exchange(chores_, Chores{});
    }
    Chores some{.releases = {},
                .taken_done = std::exchange(chores_.taken_done, {}),
                .taken_back = std::exchange(chores_.taken_back, {})};
    const auto end = chores_.releases.begin() + static_cast<std::ptrdiff_t>(most);
    some.releases.assign(std::make_move_iterator(chores_.releases.begin()), std::make_move_iterator(end));
    chores_.releases.erase(chores_.releases.begin(), end);
    return some;
}

void ConcurrencyLimits::return_chores(Chores chores) {
    const std::lock_guard lock(releases_mutex_);
    auto put_back = [](auto& from, auto& into) {
        into.insert(into.begin(), std::make_move_iterator(from.begin()), std::make_move_iterator(from.end()));
    };
    put_back(chores.releases, chores_.releases);
    put_back(chores.taken_done, chores_.taken_done);
    put_back(chores.taken_back, chores_.taken_back);
}

/// Settles the taken jobs first, then frees the places: a job's row is gone before its place goes to the next.
asio::awaitable<void> ConcurrencyLimits::do_chores(const Chores& chores, bool take_promoted) {
    if (!chores.taken_done.empty() || !chores.taken_back.empty()) {
        co_await pool_.query(
            "WITH done AS (DELETE FROM conveyor.concurrency_waiting WHERE id = ANY($1::bigint[]) AND claimed_by = $3) "
            "UPDATE conveyor.concurrency_waiting SET released_at = NULL, claimed_by = NULL, claim_expires_at = NULL "
            "WHERE id = ANY($2::bigint[]) AND claimed_by = $3",
            pg::text_array(ids_as_text(chores.taken_done)), pg::text_array(ids_as_text(chores.taken_back)),
            settings_.holder);
    }
    if (!chores.releases.empty()) {
        co_await hand_over(chores.releases, take_promoted);
    }
}

/// Frees the places and takes the jobs promoted into them, to run here (or, if this worker is leaving, lets
/// whichever worker publishes next send them to their queues).
asio::awaitable<void> ConcurrencyLimits::hand_over(const std::vector<SlotRequest>& releases, bool take) {
    const Columns columns(releases);
    const auto promoted_jobs = co_await pool_.query(
        "SELECT line_id, job_type, properties, encode(body, 'hex'), claims, concurrency_key, job_id FROM "
        "conveyor.hand_over_concurrency_places($1::text[], $2::text[], $3::text[], $4::integer[], $5, $6::boolean, "
        "$7::interval, $8::interval)",
        pg::text_array(columns.types), pg::text_array(columns.keys), pg::text_array(columns.job_ids),
        pg::text_array(columns.limits), settings_.holder, take ? "true" : "false", pg_interval(settings_.promise),
        pg_interval(settings_.lease));
    take_promoted(promoted_jobs, take);
}

/// The jobs a statement promoted from their lines (line_id, job_type, properties, body as hex, claims,
/// concurrency_key, job_id): taken to run here, each with its place, or left for whichever worker publishes next.
void ConcurrencyLimits::take_promoted(const pg::Result& promoted_jobs, bool taken_here) {
    if (!taken_here) {
        promoted(promoted_jobs.rows());
        return;
    }
    const auto config = flow_.current();
    amqp::DeliveryBatch taken;
    taken.reserve(static_cast<std::size_t>(promoted_jobs.rows()));
    for (int row = 0; row < promoted_jobs.rows(); ++row) {
        taken.push_back(taken_delivery(promoted_jobs, row));
        const auto type = promoted_jobs.text(row, 1);
        const auto* limits = config->find(type);
        ConcurrencyPlace place{std::string(type), std::string(promoted_jobs.text(row, 5)),
                               limits != nullptr && limits->concurrency ? limits->concurrency->limit : 0,
                               std::string(promoted_jobs.text(row, 6))};
        places_.add(place);
        const std::lock_guard lock(claimed_mutex_);
        claimed_.emplace(*taken.back().stored_id, std::move(place));
    }
    if (!taken.empty()) {
        taken_jobs_(std::move(taken));
    }
}

asio::awaitable<void> ConcurrencyLimits::release_all() {
    auto chores = take_chores(std::numeric_limits<std::size_t>::max());
    for (auto& place : places_.take_unused(PlacePool::Clock::now(), true)) {
        auto label = place.label;
        chores.releases.push_back({std::move(place), std::move(label)});
    }
    if (chores.empty()) {
        co_return;
    }
    try {
        co_await do_chores(chores, false);
    } catch (const pg::Error& e) {
        spdlog::warn(
            "cannot free this worker's {} concurrency places ({}); they free themselves {} s after the last "
            "renewal",
            chores.releases.size(), e.what(), settings_.lease.count());
    }
}

/// Gives back to the fleet the places kept unused past their linger, and those of keys whose jobs wait in line.
asio::awaitable<void> ConcurrencyLimits::tend_places() {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    std::string last_failure;
    while (true) {
        timer.expires_after(kTendInterval);
        co_await timer.async_wait(asio::use_awaitable);
        free_in_database(places_.take_unused(PlacePool::Clock::now()));
        const auto held = places_.keys();
        if (held.empty()) {
            continue;
        }
        std::vector<std::string> types;
        std::vector<std::string> keys;
        for (const auto& key : held) {
            types.push_back(key.type);
            keys.push_back(key.key);
        }
        std::string failure;
        try {
            const auto lines = co_await pool_.query(
                "SELECT k.job_type, k.concurrency_key FROM unnest($1::text[], $2::text[]) AS k(job_type, "
                "concurrency_key) WHERE EXISTS (SELECT 1 FROM conveyor.concurrency_waiting w WHERE w.job_type = "
                "k.job_type AND w.concurrency_key = k.concurrency_key AND w.released_at IS NULL)",
                pg::text_array(types), pg::text_array(keys));
            std::set<PlaceKey> contended;
            for (int row = 0; row < lines.rows(); ++row) {
                contended.insert({std::string(lines.text(row, 0)), std::string(lines.text(row, 1))});
            }
            free_in_database(places_.set_contended(contended));
        } catch (const pg::Error& e) {
            failure = e.what();
        }
        if (!failure.empty() && failure != last_failure) {
            spdlog::warn("concurrency limits: cannot see which keys have jobs in line ({}); trying again", failure);
        }
        last_failure = failure;
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
            co_await pool_.query(
                "UPDATE conveyor.concurrency_waiting SET claim_expires_at = now() + $2::interval WHERE claimed_by = $1",
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
                                                           "claimed_by IS NULL", "concurrency",
                                                           settings_.publish_timeout)) {
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
    // A worker that died with jobs it took from their lines: back in line, where they are promoted again.
    co_await pool_.query(
        "UPDATE conveyor.concurrency_waiting SET released_at = NULL, claimed_by = NULL, claim_expires_at = NULL "
        "WHERE claimed_by IS NOT NULL AND claim_expires_at < now()");
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
