#include "execute.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace conveyor::worker {
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

/// A failure inside a group that may be the group's doing, not the job's: a lock conflict (the group holds the locks
/// of every job before this one until it commits, and another transaction may be waiting for them while holding
/// what this job needs), or the group's connection lost (another job of the group was cancelled mid-statement).
bool lost_to_grouping(const std::exception_ptr& failure) {
    try {
        std::rethrow_exception(failure);
    } catch (const pg::Error& e) {
        const auto& code = e.sqlstate();
        return code == "40P01" || code == "40001" || code == "55P03" || code.starts_with("08");
    } catch (...) {
        return false;
    }
}

}  // namespace

void JobSlot::close() {
    closed = true;
    deadline.cancel();
}

asio::awaitable<void> watch(JobSlot& slot, std::chrono::milliseconds idle_rearm) {
    while (!slot.closed) {
        const bool watching = slot.job_deadline && !slot.timed_out;
        slot.armed_until = watching ? *slot.job_deadline : Clock::now() + idle_rearm;
        slot.deadline.expires_at(slot.armed_until);
        co_await slot.deadline.async_wait(asio::as_tuple(asio::use_awaitable));
        const auto state = co_await asio::this_coro::cancellation_state;
        if (cancelled(state)) {
            co_return;
        }
        if (slot.job_deadline && !slot.timed_out && Clock::now() >= *slot.job_deadline) {
            slot.timed_out = true;
            slot.task.signal().emit(asio::cancellation_type::terminal);
        }
    }
}

asio::awaitable<std::optional<Attempt>> Execution::run(const amqp::Delivery& delivery, AdmittedJob& job, JobSlot& slot,
                                                       const TraceContext& trace, const JobLogger& log) {
    const auto& envelope = job.envelope;
    auto& metrics = metrics_.job(delivery.queue, envelope.type);
    auto& in_flight = metrics_.in_flight(delivery.queue);
    metrics.started->Increment();
    in_flight.Increment();
    if (envelope.enqueued_at) {
        const std::chrono::duration<double> waited = std::chrono::system_clock::now() - *envelope.enqueued_at;
        metrics.queue_wait->Observe(std::max(0.0, waited.count()));
    }
    const auto& options = job.definition->options;
    const auto timeout = options.timeout.count() > 0 ? options.timeout : default_timeout_;
    const auto started = Clock::now();
    const auto started_at = std::chrono::system_clock::now();
    JobContext context(envelope, trace, log, started + timeout, &pool_);
    context.set_span_sink(spans_);
    const auto running = history_.record_start(envelope, delivery.queue, trace, started_at);
    report_progress(context, delivery.queue, started_at);
    auto result = co_await attempt_unless_cancelled(job, context, slot, timeout);
    job.pass.reset();
    if (job.start_on_record) {
        co_await forget_start(envelope.job_id, log);
    }
    result.started_at = started_at;
    result.progress = context.last_progress();
    const bool interrupted = aborting_ && !result.timed_out;
    if (interrupted && !std::holds_alternative<Success>(result.outcome)) {
        in_flight.Decrement();
        record_interruption(context, delivery.queue, started_at);
        log.warn("cancelled at shutdown; requeued");
        co_return std::nullopt;
    }
    metrics.duration->Observe(std::chrono::duration<double>(Clock::now() - started).count());
    in_flight.Decrement();
    result.emitted = std::move(context.emitted());
    co_return result;
}

asio::awaitable<Attempt> Execution::attempt_unless_cancelled(const AdmittedJob& job, JobContext& context, JobSlot& slot,
                                                             std::chrono::milliseconds timeout) {
    const auto& job_id = job.envelope.job_id;
    slot.running_job = job_id;
    slot.cancel_requested = false;
    // Known as running before the tombstones are looked at: a cancel that comes in between finds it either way.
    const JobControl::Running running(control_, job_id, slot);
    Attempt result;
    if (control_.cancelled(job_id)) {
        result.outcome = Retry{{}, "cancelled before it started"};
        result.cancelled = true;
    } else {
        result = co_await attempt(*job.definition, context, slot, timeout);
        result.cancelled = slot.cancel_requested;
    }
    slot.running_job.clear();
    slot.cancel_requested = false;
    co_return result;
}

void Execution::report_progress(JobContext& context, const std::string& queue,
                                std::chrono::system_clock::time_point started_at) {
    if (!history_.enabled()) {
        return;
    }
    // The context outlives its reporter: the attempt ends before the context does.
    context.set_progress_reporter([this, &context, &queue, started_at](double fraction, std::string_view note) {
        auto event = history_event(context.envelope(), queue, context.trace(), worker_name_, "running", started_at);
        event.progress = fraction;
        event.progress_note = std::string(note);
        history_.record(std::move(event));
    });
}

void Execution::record_interruption(const JobContext& context, const std::string& queue,
                                    std::chrono::system_clock::time_point started_at) {
    if (!history_.enabled()) {
        return;
    }
    auto event = history_event(context.envelope(), queue, context.trace(), worker_name_, "retrying", started_at);
    event.ended_at = event.recorded_at;
    event.error = "interrupted by the worker's shutdown; back in the queue";
    history_.record(std::move(event));
}

asio::awaitable<Attempt> Execution::attempt(const JobDefinition& definition, JobContext& context, JobSlot& slot,
                                            std::chrono::milliseconds timeout) {
    // The watchdog emits the slot's cancellation signal at the deadline; the shutdown does when its grace period is
    // over. Either way the handler's pending operation fails with operation_aborted.
    slot.timed_out = false;
    slot.job_deadline = Clock::now() + timeout;
    if (*slot.job_deadline < slot.armed_until) {
        slot.deadline.cancel();  // the watchdog waits for a later time; wake it to re-arm
    }
    Attempt result;
    result.timeout = timeout;
    std::optional<Outcome> outcome;
    std::string failure;
    bool permanent = false;
    try {
        outcome = co_await run_handler(definition, context, result.duplicate);
    } catch (const PermanentError& e) {
        failure = e.what();
        permanent = true;
    } catch (const std::exception& e) {
        failure = e.what();
    }
    slot.job_deadline.reset();
    result.timed_out = slot.timed_out;
    // A cancelled coroutine fails every later wait at once; what follows (settling the job) must still run.
    co_await asio::this_coro::reset_cancellation_state();
    if (outcome) {
        result.outcome = std::move(*outcome);
    } else if (result.timed_out) {
        // A timeout or an escaped exception is a transient failure unless the exception says otherwise.
        result.outcome = Retry{{}, fmt::format("job exceeded its deadline of {} ms", timeout.count())};
    } else if (permanent) {
        result.outcome = DeadLetter{"permanent_failure", std::move(failure)};
    } else {
        result.outcome = Retry{{}, std::move(failure)};
    }
    co_return result;
}

asio::awaitable<Outcome> Execution::run_handler(const JobDefinition& definition, JobContext& context, bool& duplicate) {
    if (definition.options.transaction == TransactionMode::none) {
        auto outcome = co_await definition.handler(context);
        co_return outcome;
    }
    // The transaction's span: from its begin (or the job's joining a group) to the job's verdict.
    std::optional<ScopedSpan> transaction_span;
    if (groups_ != nullptr && definition.options.group_commit) {
        auto grouped = co_await run_in_group(definition, context, duplicate, transaction_span);
        if (grouped) {
            co_return std::move(*grouped);
        }
        if (transaction_span) {
            transaction_span->fail("taken out of its group");
            transaction_span.reset();
        }
        // Its group failed, or held a lock it needed: what it did there was undone, and it runs again alone, without
        // using up an attempt. Its emits get the same ids again.
        context.emitted().clear();
        context.commit_hooks().clear();
        duplicate = false;
        context.log().debug("taken out of its group; runs again in a transaction of its own");
    }
    auto outcome = co_await run_alone(definition, context, duplicate, transaction_span);
    co_return outcome;
}

asio::awaitable<Outcome> Execution::run_alone(const JobDefinition& definition, JobContext& context, bool& duplicate,
                                              std::optional<ScopedSpan>& span) {
    std::optional<pg::Transaction> transaction;
    if (definition.options.transaction == TransactionMode::per_job) {
        start_transaction_span(context, span, false);
        const bool claimed = co_await claim_in_transaction(context, transaction);
        if (!claimed) {
            duplicate = true;
            co_return Success{};
        }
        context.bind_transaction(&*transaction);
    } else {
        context.set_transaction_opener(
            [this, &context, &transaction, &duplicate, &span]() -> asio::awaitable<pg::Transaction*> {
                start_transaction_span(context, span, false);
                const bool claimed = co_await claim_in_transaction(context, transaction);
                duplicate = !claimed;
                pg::Transaction* opened = nullptr;
                if (claimed) {
                    opened = &*transaction;
                }
                co_return opened;
            });
    }
    std::optional<Outcome> handled;
    try {
        handled = co_await definition.handler(context);
    } catch (...) {
        forget_transaction(context);
        throw;
    }
    context.set_transaction_opener({});
    // Named: no temporaries inside co_await for g++ 12.
    auto finishing = finish_transaction(std::move(*handled), context, transaction, duplicate);
    auto outcome = co_await std::move(finishing);
    co_return outcome;
}

void Execution::start_transaction_span(const JobContext& context, std::optional<ScopedSpan>& span, bool grouped) {
    span.emplace(context.span_sink(), context.trace(), grouped ? "db transaction (group commit)" : "db transaction",
                 SpanKind::client);
    span->set("db.system", std::string("postgresql"));
    span->set("conveyor.group_commit", grouped);
}

void Execution::forget_transaction(JobContext& context) {
    // The opener and the binding refer to locals of the frame that ends: they must not outlive it in the context.
    context.set_transaction_opener({});
    context.bind_transaction(nullptr);
    context.emitted().clear();
    context.commit_hooks().clear();
}

asio::awaitable<std::optional<Outcome>> Execution::run_in_group(const JobDefinition& definition, JobContext& context,
                                                                bool& duplicate, std::optional<ScopedSpan>& span) {
    std::optional<GroupCommit::Turn> turn;
    std::optional<pg::Transaction> own;  // its group failed before its turn came: a transaction of its own
    auto open = [this, &context, &turn, &own, &duplicate, &span]() -> asio::awaitable<pg::Transaction*> {
        start_transaction_span(context, span, true);
        auto joined = co_await groups_->join(context.job_id(), context.type());
        pg::Transaction* opened = nullptr;
        if (joined) {
            turn.emplace(std::move(*joined));
            opened = turn->claimed() ? &turn->transaction() : nullptr;
        } else {
            const bool claimed = co_await claim_in_transaction(context, own);
            opened = claimed ? &*own : nullptr;
        }
        duplicate = opened == nullptr;
        co_return opened;
    };
    if (definition.options.transaction == TransactionMode::per_job) {
        auto* opened = co_await open();
        if (opened == nullptr) {
            co_return Outcome{Success{}};
        }
        context.bind_transaction(opened);
    } else {
        context.set_transaction_opener(open);
    }
    std::optional<Outcome> handled;
    std::exception_ptr failure;
    try {
        handled = co_await definition.handler(context);
    } catch (...) {
        failure = std::current_exception();
    }
    context.set_transaction_opener({});
    // The group's commit decides what became of the job: a cancellation that came meanwhile (its deadline) has had
    // its effect on the handler and must not cut the turn's end short.
    const auto state = co_await asio::this_coro::cancellation_state;
    if (cancelled(state)) {
        co_await asio::this_coro::reset_cancellation_state();
    }
    if (!turn) {
        if (failure) {
            forget_transaction(context);
            std::rethrow_exception(failure);
        }
        auto finishing = finish_transaction(std::move(*handled), context, own, duplicate);
        auto outcome = co_await std::move(finishing);
        co_return outcome;
    }
    auto ending = end_turn(std::move(handled), failure, context, *turn, duplicate);
    auto outcome = co_await std::move(ending);
    co_return outcome;
}

asio::awaitable<std::optional<Outcome>> Execution::end_turn(std::optional<Outcome> handled, std::exception_ptr failure,
                                                            JobContext& context, GroupCommit::Turn& turn,
                                                            bool duplicate) {
    const bool succeeded = !failure && std::holds_alternative<Success>(*handled) && !duplicate;
    if (succeeded) {
        try {
            co_await context.write_outbox();
        } catch (...) {
            failure = std::current_exception();
        }
    }
    if (failure || !succeeded) {
        forget_transaction(context);
        const auto how = failure && lost_to_grouping(failure) ? TurnEnd::run_alone : TurnEnd::undo;
        const auto verdict = co_await turn.end(how);
        if (how == TurnEnd::run_alone && verdict == GroupVerdict::run_alone) {
            co_return std::nullopt;
        }
        if (failure) {
            std::rethrow_exception(failure);
        }
        if (duplicate) {
            co_return Outcome{Success{}};
        }
        co_return std::move(*handled);
    }
    context.bind_transaction(nullptr);
    const auto verdict = co_await turn.end(TurnEnd::keep, std::move(context.commit_hooks()));
    context.commit_hooks().clear();
    if (verdict != GroupVerdict::committed) {
        co_return std::nullopt;
    }
    co_return std::move(*handled);
}

asio::awaitable<Outcome> Execution::finish_transaction(Outcome outcome, JobContext& context,
                                                       std::optional<pg::Transaction>& transaction, bool duplicate) {
    const bool succeeded = std::holds_alternative<Success>(outcome) && !duplicate;
    if (!succeeded) {
        context.bind_transaction(nullptr);
        context.emitted().clear();  // staged for a transaction that never commits
        context.commit_hooks().clear();
        if (transaction) {
            co_await transaction->rollback();
        }
        if (duplicate) {
            outcome = Success{};
        }
        co_return outcome;
    }
    if (!transaction) {
        if (!context.emitted().empty()) {
            throw std::logic_error(
                fmt::format("job type {} emitted jobs but never began its transaction", context.type()));
        }
        context.commit_hooks().clear();
        co_return outcome;
    }
    co_await context.write_outbox();
    context.bind_transaction(nullptr);
    co_await transaction->commit();
    for (auto& hook : std::exchange(context.commit_hooks(), {})) {
        hook();
    }
    co_return outcome;
}

asio::awaitable<bool> Execution::claim_in_transaction(const JobContext& context,
                                                      std::optional<pg::Transaction>& transaction) {
    std::optional<pg::Result> claim;
    try {
        auto begun = co_await pool_.begin();
        transaction.emplace(std::move(begun));
        auto claimed = co_await transaction->query(
            "INSERT INTO conveyor.inbox (message_id, type) VALUES ($1, $2) ON CONFLICT DO NOTHING", context.job_id(),
            context.type());
        claim.emplace(std::move(claimed));
    } catch (const pg::Error& e) {
        if (e.sqlstate().starts_with("08")) {
            database_.lost(e.what());  // later jobs wait for the database instead of failing like this one
        }
        throw;
    }
    if (claim->affected() == 0) {
        co_await transaction->rollback();
        transaction.reset();
        co_return false;
    }
    co_return true;
}

asio::awaitable<void> Execution::forget_start(const std::string& job_id, const JobLogger& log) {
    std::string failure;
    try {
        co_await quarantine_.record_end(job_id);
    } catch (const std::exception& e) {
        failure = e.what();
    }
    if (!failure.empty()) {
        log.warn("could not clear its execution record: {}", failure);
    }
}

}  // namespace conveyor::worker
