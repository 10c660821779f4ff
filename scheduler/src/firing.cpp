#include "firing.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/system_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <deque>

#include "conveyor/core/config.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;
using SystemClock = std::chrono::system_clock;

namespace {

// "conveyor" in ASCII: the advisory lock every scheduler replica competes for.
constexpr std::int64_t kLeaderLock = 0x636f6e7665796f72;
// How often a standby tries to take over, and a leader checks that it still holds the lock.
constexpr auto kLeadershipCheck = std::chrono::seconds(1);
// Missed fire times are counted one by one up to this many; beyond, the latest are found in windows growing from a
// minute, so an outage of a per-second schedule costs a few steps, not one per missed second.
constexpr std::size_t kMaxMissedWalk = 100'000;
constexpr auto kFirstMisfireWindow = std::chrono::minutes(1);
constexpr int kMisfireWindowGrowth = 8;

std::chrono::sys_seconds now_seconds() {
    return std::chrono::floor<std::chrono::seconds>(SystemClock::now());
}

/// The fire times in (from, until], in order, at most `limit` of them; `complete` tells whether that was all.
std::vector<std::chrono::sys_seconds> fire_times(const Schedule& schedule, std::chrono::sys_seconds from,
                                                 std::chrono::sys_seconds until, std::size_t limit, bool& complete) {
    std::vector<std::chrono::sys_seconds> times;
    auto next = next_fire(schedule.cron, schedule.zone, from);
    while (next && *next <= until && times.size() < limit) {
        times.push_back(*next);
        next = next_fire(schedule.cron, schedule.zone, *next);
    }
    complete = !next || *next > until;
    return times;
}

/// The latest `wanted` fire times in (from, until], for an outage too long to walk in full.
std::vector<std::chrono::sys_seconds> latest_fire_times(const Schedule& schedule, std::chrono::sys_seconds from,
                                                        std::chrono::sys_seconds until, std::size_t wanted) {
    auto window = std::chrono::duration_cast<std::chrono::seconds>(kFirstMisfireWindow);
    while (true) {
        const auto start = std::max(from, until - window);
        bool complete = false;
        auto times = fire_times(schedule, start, until, kMaxMissedWalk, complete);
        if (times.size() >= wanted || start == from) {
            times.erase(times.begin(), times.end() - static_cast<std::ptrdiff_t>(std::min(wanted, times.size())));
            return times;
        }
        window *= kMisfireWindowGrowth;
    }
}

struct Plan {
    std::vector<std::chrono::sys_seconds> enqueue;
    /// Fire times missed and dropped; a lower bound when `misfires_uncounted`.
    std::size_t misfired = 0;
    bool misfires_uncounted = false;
    std::chrono::sys_seconds handled_until;
};

/// Which fire times since `last` to enqueue now: all those within the grace period, and of the missed ones the
/// latest max_catch_up (catch_up) or none (skip).
Plan plan_fires(const Schedule& schedule, std::chrono::sys_seconds last, std::chrono::sys_seconds now) {
    Plan plan;
    plan.handled_until = last;
    const auto grace = std::chrono::ceil<std::chrono::seconds>(schedule.misfire_grace);
    const auto missed_until = now - grace - std::chrono::seconds(1);  // a fire time up to this one is missed
    if (missed_until > last) {
        const std::size_t wanted = schedule.misfire == Misfire::catch_up ? schedule.max_catch_up : 0;
        bool complete = false;
        auto missed = fire_times(schedule, last, missed_until, kMaxMissedWalk, complete);
        std::size_t total = missed.size();
        if (!complete) {
            plan.misfires_uncounted = true;
            missed = latest_fire_times(schedule, missed.back(), missed_until, wanted);
            total += missed.size();
        }
        const auto kept = std::min(missed.size(), wanted);
        plan.misfired = total - kept;
        plan.enqueue.assign(missed.end() - static_cast<std::ptrdiff_t>(kept), missed.end());
        plan.handled_until = missed_until;
    }
    bool complete = false;
    const auto on_time = fire_times(schedule, std::max(last, missed_until), now, kMaxMissedWalk, complete);
    plan.enqueue.insert(plan.enqueue.end(), on_time.begin(), on_time.end());
    if (!on_time.empty()) {
        plan.handled_until = on_time.back();
    }
    return plan;
}

}  // namespace

ScheduleFiring::ScheduleFiring(const asio::any_io_executor& executor, pg::Pool& pool,
                               const pg::Settings& session_settings, std::vector<Schedule> schedules,
                               SchedulerMetrics& metrics)
    : pool_(pool),
      session_(executor, session_settings),
      schedules_(std::move(schedules)),
      metrics_(metrics),
      next_due_(schedules_.size()) {
    // Each schedule's series exist from the start at 0, so increase() and absent-fire alerts see them.
    for (const auto& schedule : schedules_) {
        (void)metrics_.fired(schedule.name);
        (void)metrics_.misfired(schedule.name);
    }
}

asio::awaitable<bool> ScheduleFiring::hold_leadership() {
    std::string failure;
    try {
        if (!session_.connected()) {
            leading_ = false;
            co_await session_.connect();
        }
        if (leading_) {
            co_await session_.query("SELECT 1");
        } else {
            const auto taken = co_await session_.query("SELECT pg_try_advisory_lock($1)", kLeaderLock);
            leading_ = taken.text(0, 0) == "t";
        }
    } catch (const std::exception& e) {
        failure = e.what();
    }
    if (!failure.empty()) {
        if (leading_) {
            spdlog::error("scheduler: lost the database connection that holds leadership ({}); standing down", failure);
        }
        leading_ = false;
        session_.disconnect();
    }
    co_return leading_.load();
}

asio::awaitable<void> ScheduleFiring::adopt_schedules() {
    auto transaction = co_await pool_.begin();
    std::vector<std::string> names;
    for (const auto& schedule : schedules_) {
        names.push_back(schedule.name);
        const auto zone = schedule.zone.name();
        const auto misfire = to_string(schedule.misfire);
        // A changed expression or zone starts from now: the old last fire time says nothing about the new times.
        co_await transaction.query(
            "INSERT INTO conveyor.schedules AS s (name, cron, timezone, type, payload, misfire, last_fire_at) "
            "VALUES ($1, $2, $3, $4, $5::jsonb, $6, date_trunc('second', now())) "
            "ON CONFLICT (name) DO UPDATE SET last_fire_at = CASE WHEN s.cron <> excluded.cron "
            "OR s.timezone <> excluded.timezone THEN greatest(s.last_fire_at, excluded.last_fire_at) "
            "ELSE s.last_fire_at END, cron = excluded.cron, timezone = excluded.timezone, type = excluded.type, "
            "payload = excluded.payload, misfire = excluded.misfire, active = true, updated_at = now()",
            schedule.name, schedule.cron.text(), zone, schedule.type, schedule.payload, misfire);
    }
    const auto kept = pg::text_array(names);
    const auto retired = co_await transaction.query(
        "UPDATE conveyor.schedules SET active = false, next_fire_at = NULL, updated_at = now() "
        "WHERE active AND name <> ALL($1::text[]) RETURNING name",
        kept);
    for (int row = 0; row < retired.rows(); ++row) {
        spdlog::warn(
            "scheduler: schedule {} is not in this replica's schedules file; it does not fire while this "
            "replica leads",
            retired.text(row, 0));
    }
    co_await transaction.commit();
    std::fill(next_due_.begin(), next_due_.end(), std::optional<SysSeconds>(now_seconds()));
}

asio::awaitable<std::optional<std::chrono::sys_seconds>> ScheduleFiring::fire(const Schedule& schedule) {
    auto transaction = co_await pool_.begin();
    const auto state = co_await transaction.query(
        "SELECT floor(extract(epoch FROM last_fire_at))::bigint FROM conveyor.schedules WHERE name = $1 AND active "
        "FOR UPDATE",
        schedule.name);
    if (state.rows() == 0) {
        // Another leader's file does not have it (a rolling update): not ours to fire until we lead again.
        co_await transaction.commit();
        co_return std::nullopt;
    }
    const SysSeconds last{std::chrono::seconds(state.integer(0, 0))};
    const auto now = now_seconds();
    const auto plan = plan_fires(schedule, last, now);
    std::int64_t enqueued = 0;
    if (!plan.enqueue.empty()) {
        std::vector<std::string> times;
        times.reserve(plan.enqueue.size());
        for (const auto at : plan.enqueue) {
            times.push_back(utc_timestamp_seconds(at));
        }
        const auto fire_array = pg::text_array(times);
        const auto inserted = co_await transaction.query(
            "INSERT INTO conveyor.scheduled_jobs (id, type, payload, run_at, idempotency_key, source, priority, "
            "unique_key, unique_for) "
            "SELECT gen_random_uuid(), $2, $3::jsonb, fire, "
            "'schedule:' || $1 || ':' || to_char(fire AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
            "'schedule:' || $1, $5, nullif($6, ''), $7::integer FROM unnest($4::timestamptz[]) AS fire "
            "ON CONFLICT (source, idempotency_key) DO NOTHING",
            schedule.name, schedule.type, schedule.payload, fire_array, schedule.priority, schedule.unique_key,
            static_cast<std::int64_t>(schedule.unique_for.count()));
        enqueued = inserted.affected();
    }
    const auto next = next_fire(schedule.cron, schedule.zone, std::max(plan.handled_until, now));
    const std::optional<std::string> next_text = next ? std::optional(utc_timestamp_seconds(*next)) : std::nullopt;
    const auto handled_text = utc_timestamp_seconds(plan.handled_until);
    co_await transaction.query(
        "UPDATE conveyor.schedules SET last_fire_at = $2::timestamptz, next_fire_at = $3::timestamptz, "
        "fired = fired + $4, misfired = misfired + $5, updated_at = now() WHERE name = $1",
        schedule.name, handled_text, next_text, enqueued, static_cast<std::int64_t>(plan.misfired));
    co_await transaction.commit();

    if (enqueued > 0) {
        metrics_.fired(schedule.name).Increment(static_cast<double>(enqueued));
        spdlog::debug("scheduler: {} fired for {} ({} jobs)", schedule.name, handled_text, enqueued);
    }
    if (plan.misfired > 0 || plan.misfires_uncounted) {
        metrics_.misfired(schedule.name).Increment(static_cast<double>(plan.misfired));
        spdlog::warn(
            "scheduler: {} missed {}{} fire times since {} by more than its grace of {} ms; {} ({} enqueued "
            "late)",
            schedule.name, plan.misfires_uncounted ? "at least " : "", plan.misfired, utc_timestamp_seconds(last),
            schedule.misfire_grace.count(),
            schedule.misfire == Misfire::catch_up ? "caught up on the latest" : "skipped them",
            schedule.misfire == Misfire::catch_up ? plan.enqueue.size() : 0);
    }
    co_return next;
}

asio::awaitable<void> ScheduleFiring::run(const std::atomic<bool>& stopping) {
    asio::system_timer timer(co_await asio::this_coro::executor);
    if (schedules_.empty()) {
        // Nothing to fire: leading would only take the lead from a replica that has schedules.
        spdlog::info("scheduler: no schedules; this replica relays and serves the API but never leads");
        co_return;
    }
    bool led = false;
    std::string last_failure;
    while (!stopping) {
        auto wake = SystemClock::now() + kLeadershipCheck;
        std::string failure;
        try {
            const bool leading = co_await hold_leadership();
            metrics_.leader.Set(leading ? 1 : 0);
            if (leading && !led) {
                spdlog::info("scheduler: leading; firing {} schedules", schedules_.size());
                co_await adopt_schedules();
            } else if (!leading && led) {
                spdlog::info("scheduler: no longer leading; another replica fires the schedules");
            }
            led = leading;
            for (std::size_t i = 0; leading && i < schedules_.size(); ++i) {
                auto& due = next_due_[i];
                if (due && *due <= SystemClock::now()) {
                    due = co_await fire(schedules_[i]);
                }
                if (due) {
                    wake = std::min<SystemClock::time_point>(wake, *due);
                }
            }
            last_failure.clear();
        } catch (const std::exception& e) {
            failure = e.what();
        }
        if (!failure.empty() && failure != last_failure) {
            spdlog::error("scheduler: firing schedules failed: {}; trying again", failure);
            last_failure = failure;
        }
        timer.expires_at(wake);
        co_await timer.async_wait(asio::use_awaitable);
    }
    if (leading_) {
        spdlog::info("scheduler: stopping; giving up leadership");
    }
    session_.disconnect();
    leading_ = false;
    metrics_.leader.Set(0);
}

}  // namespace conveyor::scheduler
