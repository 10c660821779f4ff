#include <fmt/format.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdlib>

#include "../common/payload.hpp"
#include "conveyor/jobs/jobs.hpp"

namespace conveyor::jobs {
namespace asio = boost::asio;

namespace {

// A sleep longer than this is a typo, not a test; it would only hold a worker slot until its deadline.
constexpr std::int64_t kMaxSleepMs = 3'600'000;
constexpr std::int64_t kMaxEmits = 100;

/// Reads an optional non-negative integer field; nullopt in `error` means absent is fine.
std::optional<std::int64_t> integer_field(const simdjson::dom::element& payload, std::string_view key,
                                          std::string& error) {
    auto field = payload[key];
    if (field.error() == simdjson::NO_SUCH_FIELD) {
        return std::nullopt;
    }
    std::int64_t value = 0;
    if (field.get(value) != simdjson::SUCCESS || value < 0) {
        error = fmt::format("'{}' must be a non-negative integer", key);
        return std::nullopt;
    }
    return value;
}

asio::awaitable<Outcome> noop(JobContext& /*context*/) {
    co_return Success{};
}

asio::awaitable<Outcome> sleep(JobContext& context) {
    std::string error;
    const auto ms = integer_field(context.payload(), "ms", error);
    if (!error.empty() || !ms || *ms > kMaxSleepMs) {
        // Named rather than built in the co_return: g++ 12 double-destroys temporaries of a conditional there.
        DeadLetter invalid{"invalid_payload", error};
        if (invalid.error.empty()) {
            invalid.error = fmt::format("diag.sleep needs 'ms' between 0 and {}", kMaxSleepMs);
        }
        co_return invalid;
    }
    // A timer, never a blocking sleep: thousands of these share a couple of threads. A long sleep goes in steps
    // and reports its progress after each.
    constexpr std::int64_t kStepMs = 500;
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (std::int64_t slept = 0; slept < *ms;) {
        const auto step = *ms > 2 * kStepMs ? std::min(kStepMs, *ms - slept) : *ms;
        timer.expires_after(std::chrono::milliseconds(step));
        co_await timer.async_wait(asio::use_awaitable);
        slept += step;
        if (step < *ms) {
            context.progress(static_cast<double>(slept) / static_cast<double>(*ms),
                             fmt::format("slept {} of {} ms", slept, *ms));
        }
    }
    co_return Success{};
}

asio::awaitable<Outcome> fail(JobContext& context) {
    std::string error;
    const auto times = integer_field(context.payload(), "times", error).value_or(1);
    if (!error.empty()) {
        Outcome invalid = DeadLetter{"invalid_payload", error};
        co_return invalid;
    }
    bool permanent = false;
    if (auto field = context.payload()["permanent"]; field.error() != simdjson::NO_SUCH_FIELD) {
        if (field.get(permanent) != simdjson::SUCCESS) {
            Outcome invalid = DeadLetter{"invalid_payload", "'permanent' must be a boolean"};
            co_return invalid;
        }
    }
    if (context.attempt() > times) {
        co_return Success{};
    }
    auto reason = fmt::format("diag.fail: failing attempt {} of {}", context.attempt(), times);
    Outcome failure;
    if (permanent) {
        failure = DeadLetter{"permanent_failure", std::move(reason)};
    } else {
        failure = Retry{std::chrono::milliseconds(0), std::move(reason)};
    }
    co_return failure;
}

/// Applies the job's effect once per run, inside the inbox transaction: the ledger shows any effect applied twice
/// (applied > 1) or lost (no row). Options, for fault tests:
///   "ms": holds the transaction open that long after its first write, to widen the window for faults;
///   "emit": emits that many diag.ledger jobs through the outbox;
///   "also": a second ledger row to write after the hold (two jobs naming each other deadlock);
///   "lock_timeout_ms": how long to wait for a row lock before failing with 55P03.
asio::awaitable<Outcome> ledger(JobContext& context) {
    std::string error;
    const auto ms = integer_field(context.payload(), "ms", error).value_or(0);
    const auto emit = integer_field(context.payload(), "emit", error).value_or(0);
    const auto lock_timeout_ms = integer_field(context.payload(), "lock_timeout_ms", error).value_or(0);
    std::string_view also;
    if (auto field = context.payload()["also"]; field.error() != simdjson::NO_SUCH_FIELD) {
        if (field.get(also) != simdjson::SUCCESS || also.empty() || also.size() > kMaxJobIdBytes) {
            error = "'also' must be a job id";
        }
    }
    if (!error.empty() || ms > kMaxSleepMs || emit > kMaxEmits || lock_timeout_ms > kMaxSleepMs) {
        Outcome invalid = DeadLetter{"invalid_payload",
                                     fmt::format("diag.ledger: {}", error.empty() ? "a value is out of range" : error)};
        co_return invalid;
    }
    auto& transaction = context.transaction();
    std::string previous_lock_timeout;
    if (lock_timeout_ms > 0) {
        const auto lock_timeout = fmt::format("{}ms", lock_timeout_ms);
        const auto previous = co_await transaction.query(
            "SELECT current_setting('lock_timeout'), set_config('lock_timeout', $1, true)", lock_timeout);
        previous_lock_timeout = previous.text(0, 0);
    }
    for (std::int64_t i = 0; i < emit; ++i) {
        context.emit("diag.ledger", "{}");
    }
    constexpr std::string_view kApply =
        "INSERT INTO conveyor.diag_ledger (job_id, applied) VALUES ($1, 1) "
        "ON CONFLICT (job_id) DO UPDATE SET applied = diag_ledger.applied + 1";
    co_await transaction.query(kApply, context.job_id());
    if (ms > 0) {
        asio::steady_timer timer(co_await asio::this_coro::executor, std::chrono::milliseconds(ms));
        co_await timer.async_wait(asio::use_awaitable);
    }
    if (!also.empty()) {
        co_await transaction.query(kApply, also);
    }
    if (!previous_lock_timeout.empty()) {
        // The transaction may go on with other jobs' statements (group commit): they get its setting back.
        co_await transaction.query("SELECT set_config('lock_timeout', $1, true)", previous_lock_timeout);
    }
    co_return Success{};
}

/// Aborts the worker: at once, or with {"after_commit": true} once its transaction (its group's, with group commit)
/// has committed and before the jobs committed with it are acknowledged, the window exactly-once must survive.
asio::awaitable<Outcome> crash(JobContext& context, bool may_crash) {
    if (!may_crash) {
        Outcome refused = DeadLetter{"permanent_failure",
                                     "diag.crash is disabled; set CONVEYOR_ENABLE_CRASH_JOBS=1 to let it abort the "
                                     "worker"};
        co_return refused;
    }
    const auto field = context.payload()["after_commit"].get_bool();
    const bool after_commit = field.error() == simdjson::SUCCESS && field.value_unsafe();
    if (!after_commit) {
        context.log().error("diag.crash: aborting the worker process");
        std::abort();
    }
    context.after_commit([job_id = context.job_id()] {
        spdlog::error("diag.crash {}: committed; aborting the worker process before the acknowledgements", job_id);
        std::abort();
    });
    co_return Success{};
}

JobOptions validated_by(PayloadValidator validate) {
    JobOptions options;
    options.validate = std::move(validate);
    return options;
}

std::optional<std::string> validate_sleep(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.integer("ms", Need::required, 0, kMaxSleepMs);
    return reader.error();
}

std::optional<std::string> validate_fail(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.integer("times", Need::optional, 0, std::numeric_limits<std::int64_t>::max());
    (void)reader.boolean("permanent", Need::optional);
    return reader.error();
}

std::optional<std::string> validate_ledger(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.integer("ms", Need::optional, 0, kMaxSleepMs);
    (void)reader.integer("emit", Need::optional, 0, kMaxEmits);
    (void)reader.integer("lock_timeout_ms", Need::optional, 0, kMaxSleepMs);
    (void)reader.string("also", Need::optional, 1, kMaxJobIdBytes);
    return reader.error();
}

std::optional<std::string> validate_crash(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.boolean("after_commit", Need::optional);
    return reader.error();
}

}  // namespace

void register_diag_jobs(JobRegistry& registry) {
    registry.add("diag.noop", noop);
    registry.add("diag.sleep", sleep, validated_by(validate_sleep));
    registry.add("diag.fail", fail, validated_by(validate_fail));
    auto transactional = validated_by(validate_ledger);
    transactional.transaction = TransactionMode::per_job;
    registry.add("diag.ledger", ledger, transactional);
    // Killing the process is for poison-message tests only; a production worker dead-letters the job instead.
    const char* crash_enabled = std::getenv("CONVEYOR_ENABLE_CRASH_JOBS");
    const bool may_crash = crash_enabled != nullptr && std::string_view(crash_enabled) == "1";
    JobOptions crash_options = validated_by(validate_crash);
    crash_options.transaction = TransactionMode::per_job;
    registry.add(
        "diag.crash", [may_crash](JobContext& context) { return crash(context, may_crash); }, crash_options);
}

}  // namespace conveyor::jobs
