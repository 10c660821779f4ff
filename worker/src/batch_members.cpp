#include "batch_members.hpp"

#include "conveyor/core/utf8.hpp"
#include "flow_limits.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;

namespace {
// Member ends per statement.
constexpr std::size_t kMaxBatch = 500;
}  // namespace

BatchMembers::BatchMembers(pg::Pool& pool, DatabaseHealth& database, const std::atomic<bool>& draining)
    : pool_(pool), database_(database), draining_(draining), records_(kMaxBatch) {}

asio::awaitable<void> BatchMembers::ended(const std::string& batch_id, const std::string& job_id,
                                          std::string_view state, const JobLogger& log) {
    if (batch_id.empty()) {
        co_return;
    }
    // As the job history stores it: a job id that is not valid UTF-8 must not fail the statement it shares.
    const batches::MemberEnd end{batch_id, utf8::postgres_text(job_id), std::string(state)};
    const auto recorded = co_await call_when_usable(records_, end, database_, draining_, log);
    if (!recorded) {
        log.error("its end ({}) is not counted in batch {}: the database is away and the worker is stopping", state,
                  batch_id);
    }
}

asio::awaitable<void> BatchMembers::run() {
    auto record_ends = [this](std::vector<batches::MemberEnd>& ends) -> asio::awaitable<std::vector<bool>> {
        co_await batches::record(pool_, ends);
        co_return std::vector<bool>(ends.size(), true);
    };
    co_await records_.serve(record_ends);
}

}  // namespace conveyor::worker
