#include <fmt/format.h>

#include "../common/families.hpp"
#include "../common/payload.hpp"

namespace conveyor::jobs {
namespace asio = boost::asio;

namespace {

constexpr std::int64_t kMaxEventId = std::numeric_limits<std::int64_t>::max();
// SQLSTATE raised by shop.project_aggregate when an earlier event of the aggregate is not visible yet.
constexpr std::string_view kEventGap = "CV001";
// A rebuild holds the checkpoints: shop.project_aggregate gives up waiting for them after a second.
constexpr std::string_view kLockNotAvailable = "55P03";
// A rebuild replays the whole event store in one statement; the pool's per-statement limit is for job-sized work.
// It stays under RabbitMQ's consumer_timeout (30 min by default), past which the broker would take the delivery
// back.
constexpr std::chrono::minutes kRebuildTimeout{20};

std::optional<std::string> validate_update(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.integer("event_id", Need::required, 1, kMaxEventId);
    reader.only({"event_id"});
    return reader.error();
}

/// projections.update: brings every read model up to date with the event's order, applying its events in version
/// order from the event store (shop.project_aggregate). A job that arrives late finds its event applied and does
/// nothing; one that arrives early applies the earlier events first; a missing version makes it wait.
asio::awaitable<Outcome> update(JobContext& context) {
    PayloadReader reader(context.payload());
    const auto event_id = reader.integer("event_id", Need::required, 1, kMaxEventId).value_or(0);
    std::optional<pg::Result> applied;
    std::string gap;
    bool rebuilding = false;
    try {
        auto result = co_await context.transaction().query("SELECT shop.project_aggregate($1)", event_id);
        applied.emplace(std::move(result));
    } catch (const pg::Error& e) {
        rebuilding = e.sqlstate() == kLockNotAvailable;
        if (e.sqlstate() != kEventGap && !rebuilding) {
            throw;
        }
        gap = e.what();
    }
    if (rebuilding) {
        // Not the job's failure: it waits for the rebuild without using up an attempt.
        Outcome wait = Retry{std::chrono::seconds(2), "a projection rebuild holds the checkpoints", false};
        co_return wait;
    }
    if (!applied) {
        Outcome wait = Retry{std::chrono::seconds(1), fmt::format("event {}: {}", event_id, gap)};
        co_return wait;
    }
    if (applied->is_null(0, 0)) {
        Outcome unknown = DeadLetter{"invalid_payload", fmt::format("no event {} in the event store", event_id)};
        co_return unknown;
    }
    context.log().debug("event {}: {} projection step(s) applied", event_id, applied->integer(0, 0));
    co_return Success{};
}

std::optional<std::string> validate_rebuild(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.one_of("projection", {"order_summary", "customer_stats", "daily_sales"});
    reader.only({"projection"});
    return reader.error();
}

/// projections.rebuild: replaces a read model with one computed from the whole event store, in one transaction,
/// with the same function the incremental updates use (shop.rebuild_projection).
asio::awaitable<Outcome> rebuild(JobContext& context) {
    PayloadReader reader(context.payload());
    const auto projection = reader.one_of("projection", {"order_summary", "customer_stats", "daily_sales"});
    auto& transaction = context.transaction();
    co_await transaction.set_statement_timeout(kRebuildTimeout);
    const auto started = std::chrono::steady_clock::now();
    const auto replayed = co_await transaction.query("SELECT shop.rebuild_projection($1)", *projection);
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
    context.log().info("rebuilt {} from {} events in {} ms", *projection, replayed.integer(0, 0), took.count());
    co_return Success{};
}

}  // namespace

void register_projection_jobs(JobRegistry& registry) {
    JobOptions options;
    options.transaction = TransactionMode::per_job;
    options.validate = validate_update;
    // An early event waits for its predecessors: short, steady retries, and enough of them to outlast a
    // predecessor that is itself retrying.
    RetryPolicy patient;
    patient.max_attempts = 30;
    patient.max_delay = std::chrono::seconds(30);
    options.retry = patient;
    registry.add("projections.update", update, options);
    JobOptions rebuild_options;
    rebuild_options.transaction = TransactionMode::per_job;
    rebuild_options.validate = validate_rebuild;
    rebuild_options.timeout = kRebuildTimeout + std::chrono::minutes(2);
    // It holds its transaction for minutes and raises the statement timeout for the rest of it.
    rebuild_options.group_commit = false;
    registry.add("projections.rebuild", rebuild, rebuild_options);
}

}  // namespace conveyor::jobs
