#include <fmt/format.h>

#include "../common/families.hpp"
#include "../common/payload.hpp"

/// emails.prune: the email log's retention. A row of shop.email_log is what makes an email go out once per dedupe
/// key, so pruning it ends that promise for its key: keep the log longer than any job or replay could be late.
namespace conveyor::jobs {
namespace asio = boost::asio;

namespace {

constexpr std::int64_t kMaxKeepDays = 36'500;
/// Rows deleted per statement, each statement its own transaction: a large backlog never holds a long lock.
constexpr std::int64_t kBatch = 5'000;
constexpr std::chrono::minutes kPruneTimeout{10};

std::optional<std::string> validate_prune(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)reader.integer("keep_days", Need::required, 1, kMaxKeepDays);
    reader.only({"keep_days"});
    return reader.error();
}

/// Deletes the log's rows of emails sent more than `keep_days` days ago, and of claims that lapsed that long ago
/// (a job that died mid-send and was never retried), in batches until none is left.
asio::awaitable<Outcome> prune(JobContext& context) {
    PayloadReader reader(context.payload());
    const auto keep_days = reader.integer("keep_days", Need::required, 1, kMaxKeepDays).value_or(kMaxKeepDays);
    std::int64_t pruned = 0;
    for (;;) {
        const auto deleted = co_await context.database().query(
            "WITH doomed AS ("
            "  SELECT dedupe_key FROM shop.email_log "
            "  WHERE (status = 'sent' AND sent_at < now() - make_interval(days => $1::integer)) "
            "     OR (status = 'sending' AND claimed_until < now() - make_interval(days => $1::integer)) "
            "  LIMIT $2 FOR UPDATE SKIP LOCKED) "
            "DELETE FROM shop.email_log l USING doomed WHERE l.dedupe_key = doomed.dedupe_key",
            keep_days, kBatch);
        pruned += deleted.affected();
        if (deleted.affected() < kBatch) {
            break;
        }
    }
    context.log().info("email log: {} row(s) older than {} day(s) pruned", pruned, keep_days);
    co_return Success{};
}

}  // namespace

void register_email_retention_jobs(JobRegistry& registry) {
    JobOptions options;
    options.validate = validate_prune;
    options.timeout = kPruneTimeout;
    registry.add("emails.prune", prune, options);
}

}  // namespace conveyor::jobs
