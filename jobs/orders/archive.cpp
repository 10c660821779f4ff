#include <fmt/format.h>

#include "../common/families.hpp"
#include "../common/payload.hpp"

/// orders.archive: the event store's retention. Events are the audit trail and are never deleted: whole closed months
/// move into shop.events_archive, which rebuilds read too, and the checkpoints of their orders go with them.
namespace conveyor::jobs {
namespace asio = boost::asio;

namespace {

constexpr std::int64_t kMaxKeepMonths = 1200;
/// A month's events move in one transaction; a large month takes a while.
constexpr std::chrono::minutes kArchiveTimeout{20};

std::optional<std::string> validate_archive(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.integer("keep_months", Need::required, 1, kMaxKeepMonths);
    reader.only({"keep_months"});
    return reader.error();
}

/// Archives every month that ended more than `keep_months` whole months ago, oldest first, up to the first month
/// that still has an order whose saga has not ended (or whose read models are behind it): that month and the later
/// ones wait for the next run. An archived order changes no more (a cancellation of it is refused).
asio::awaitable<Outcome> archive(JobContext& context) {
    PayloadReader reader(context.payload());
    const auto keep_months = reader.integer("keep_months", Need::required, 1, kMaxKeepMonths).value_or(1);
    auto& transaction = context.transaction();
    co_await transaction.set_statement_timeout(kArchiveTimeout);
    const auto months = co_await transaction.query(
        "SELECT to_char(month, 'YYYY-MM'), orders, events, outcome FROM shop.archive_closed_months("
        "  (date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => $1::integer))::date)",
        keep_months);
    if (months.rows() == 0) {
        context.log().info("no month to archive (keeping {} month(s))", keep_months);
    }
    for (int row = 0; row < months.rows(); ++row) {
        context.log().info("month {}: {} order(s), {} event(s): {}", months.text(row, 0), months.integer(row, 1),
                           months.integer(row, 2), months.text(row, 3));
    }
    co_return Success{};
}

}  // namespace

void register_archive_jobs(JobRegistry& registry) {
    JobOptions options;
    options.transaction = TransactionMode::per_job;
    options.validate = validate_archive;
    options.timeout = kArchiveTimeout + std::chrono::minutes(2);
    // It holds its transaction for as long as a month's events take to move, and raises the statement timeout.
    options.group_commit = false;
    registry.add("orders.archive", archive, options);
}

}  // namespace conveyor::jobs
