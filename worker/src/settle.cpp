#include "settle.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <random>

#include "conveyor/core/config.hpp"
#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;

namespace {

constexpr auto kRefusedPublishBackoff = std::chrono::seconds(1);
// How long a job handed back at shutdown waits before its queue sees it again: long enough for the next delivery
// not to come back to the worker that is leaving.
constexpr auto kShutdownPark = std::chrono::seconds(1);
// How much of an error a log line quotes; the header keeps up to job_headers::kMaxErrorBytes.
constexpr std::size_t kLoggedErrorBytes = 256;

/// Each I/O thread draws retry jitter from its own generator: no lock on the failure path.
double unit_random() {
    thread_local std::mt19937_64 generator{std::random_device{}()};
    return std::uniform_real_distribution<double>(0.0, 1.0)(generator);
}

/// The copy of a message that waits `delay` in the delay ladder and then returns, unchanged, to the tail of its
/// family's queue.
amqp::Message parked_copy(const amqp::Message& original, std::chrono::seconds delay, std::string_view type) {
    amqp::Message message = original;
    message.exchange = topology::delay_entry_exchange();
    message.routing_key = topology::delay_routing_key(delay, type);
    return message;
}

/// Whether the ladder brings the delivery back to the queue it came from: it routes by job type, and a message
/// published straight to the queue (by its name, through the default exchange) has none.
bool returns_to_its_queue(const amqp::Delivery& delivery) {
    const auto type = topology::job_type_of_routing_key(delivery.message.routing_key);
    const auto family = topology::family_of_queue(delivery.queue);
    return !family.empty() && type.size() > family.size() && type.starts_with(family) && type[family.size()] == '.';
}

std::string or_dash(std::string_view text) {
    return text.empty() ? std::string("-") : job_headers::bounded(text, 128);
}

/// What a decision means for the job's unique key.
UniqueKeys::End key_end(const Decision& decided) {
    if (std::holds_alternative<decision::RetryLater>(decided)) {
        return UniqueKeys::End::retried;
    }
    return std::holds_alternative<decision::Cancel>(decided) ? UniqueKeys::End::cancelled : UniqueKeys::End::finished;
}

/// How a decision ends the job as a batch member; empty while it will run again.
std::optional<std::string_view> member_end(const Decision& decided) {
    if (std::holds_alternative<decision::RetryLater>(decided)) {
        return std::nullopt;
    }
    if (std::holds_alternative<decision::Acknowledge>(decided)) {
        return "succeeded";
    }
    return std::holds_alternative<decision::Cancel>(decided) ? "cancelled" : "dead_lettered";
}

}  // namespace

Decision decide(const Attempt& attempt, std::uint32_t attempt_number, const RetryPolicy& policy, double unit_random) {
    if (attempt.duplicate || std::holds_alternative<Success>(attempt.outcome)) {
        return decision::Acknowledge{};
    }
    if (attempt.cancelled) {
        return decision::Cancel{};
    }
    if (const auto* retry = std::get_if<Retry>(&attempt.outcome)) {
        if (!retry->counts_attempt) {
            return decision::RetryLater{std::max(retry->after, policy.delay_after(1, {}, unit_random)), false,
                                        retry->reason};
        }
        if (attempt_number < policy.max_attempts) {
            return decision::RetryLater{policy.delay_after(attempt_number, retry->after, unit_random), true,
                                        retry->reason};
        }
        return decision::GiveUp{
            {attempt.timed_out ? "timeout" : "attempts_exhausted",
             fmt::format("attempt {} of {} failed: {}", attempt_number, policy.max_attempts, retry->reason)}};
    }
    const auto& dead = std::get<DeadLetter>(attempt.outcome);
    return decision::GiveUp{{dead.reason.empty() ? "permanent_failure" : dead.reason, dead.error}};
}

asio::awaitable<void> Settlement::settle(const amqp::Delivery& delivery, const Envelope& envelope,
                                         WorkerMetrics::Job& metrics, Attempt attempt, const JobLogger& log,
                                         const TraceContext& trace) {
    if (attempt.duplicate) {
        co_await unique_keys_.after_attempt(envelope, UniqueKeys::End::finished, log);
        co_await batch_members_.ended(envelope.batch, envelope.job_id, "succeeded", log);
        source_.ack(delivery);
        metrics.duplicate->Increment();
        ++counts_.duplicates;
        record_end(delivery, envelope, attempt, trace, "duplicate", {});
        log.info("duplicate: already processed (found in the inbox); acknowledged without running");
        co_return;
    }
    auto decided = decide(attempt, envelope.attempt, policies_.at(envelope.type), unit_random());
    co_await unique_keys_.after_attempt(envelope, key_end(decided), log);
    if (const auto state = member_end(decided)) {
        co_await batch_members_.ended(envelope.batch, envelope.job_id, *state, log);
    }
    if (std::holds_alternative<decision::Acknowledge>(decided)) {
        source_.ack(delivery);
        metrics.success->Increment();
        ++counts_.succeeded;
        record_end(delivery, envelope, attempt, trace, "succeeded", {});
        log.debug("attempt {} succeeded", envelope.attempt);
        if (!attempt.emitted.empty()) {
            co_await publish_emitted(attempt.emitted, log);
        }
    } else if (std::holds_alternative<decision::Cancel>(decided)) {
        // Named: g++ 12 mishandles non-trivial temporaries inside a co_await expression.
        const Verdict on_request{"cancelled", "cancelled on request"};
        if (!co_await compensate(delivery, envelope, on_request, log, trace)) {
            co_return;
        }
        source_.ack(delivery);
        metrics.cancelled->Increment();
        ++counts_.cancelled;
        record_end(delivery, envelope, attempt, trace, "cancelled", "cancelled on request");
        log.info("cancelled on request; acknowledged, not retried");
    } else if (auto* retry = std::get_if<decision::RetryLater>(&decided)) {
        record_end(delivery, envelope, attempt, trace, "retrying", retry->reason);
        co_await schedule_retry(delivery, envelope, metrics, std::move(*retry), log);
    } else {
        auto& verdict = std::get<decision::GiveUp>(decided).verdict;
        const auto why = fmt::format("{}: {}", verdict.reason, verdict.error);
        if (!co_await compensate(delivery, envelope, verdict, log, trace)) {
            co_return;
        }
        record_end(delivery, envelope, attempt, trace, "dead_lettered", why);
        co_await dead_letter(delivery, metrics, envelope.attempt, std::move(verdict), trace);
    }
}

void Settlement::record_span(const amqp::Delivery& delivery, const Envelope& envelope, const Attempt& attempt,
                             const TraceContext& trace, const std::string& state, const std::string& error) {
    if (spans_ == nullptr || !trace.sampled()) {
        return;
    }
    Span span;
    span.context = trace;
    span.name = envelope.type;
    span.kind = SpanKind::consumer;
    span.start = attempt.started_at;
    span.end = std::chrono::system_clock::now();
    span.attributes = {{"messaging.system", std::string("rabbitmq")},
                       {"messaging.destination.name", delivery.queue},
                       {"messaging.message.id", envelope.job_id},
                       {"conveyor.job.type", envelope.type},
                       {"conveyor.job.attempt", static_cast<std::int64_t>(envelope.attempt)},
                       {"conveyor.job.state", state}};
    if (!envelope.correlation_id.empty()) {
        span.attributes.emplace_back("messaging.message.conversation_id", envelope.correlation_id);
    }
    span.failed = state == "retrying" || state == "dead_lettered";
    if (span.failed) {
        span.status_message = job_headers::bounded(error, kLoggedErrorBytes);
    }
    spans_->record(std::move(span));
}

void Settlement::record_end(const amqp::Delivery& delivery, const Envelope& envelope, const Attempt& attempt,
                            const TraceContext& trace, std::string state, const std::string& error) {
    record_span(delivery, envelope, attempt, trace, state, error);
    if (!history_.enabled()) {
        return;
    }
    auto event = history_event(envelope, delivery.queue, trace, worker_name_, std::move(state), attempt.started_at);
    event.ended_at = event.recorded_at;
    event.error = job_headers::bounded(error, job_headers::kMaxErrorBytes);
    if (attempt.progress) {
        event.progress = attempt.progress->first;
        event.progress_note = attempt.progress->second;
    }
    history_.record(std::move(event));
}

asio::awaitable<void> Settlement::discard_duplicate(const amqp::Delivery& delivery, const Envelope& envelope,
                                                    WorkerMetrics::Job& metrics, const JobLogger& log,
                                                    const TraceContext& trace) {
    co_await batch_members_.ended(envelope.batch, envelope.job_id, "deduplicated", log);
    source_.ack(delivery);
    metrics.deduplicated->Increment();
    ++counts_.deduplicated;
    Attempt unrun;
    unrun.started_at = std::chrono::system_clock::now();
    const auto why = fmt::format("unique key '{}' is held by another job of {}", envelope.unique_key, envelope.type);
    record_end(delivery, envelope, unrun, trace, "deduplicated", why);
    log.info("deduplicated: {}; acknowledged without running", why);
}

void Settlement::requeue(const amqp::Delivery& delivery) {
    source_.reject(delivery, true);
    ++counts_.requeued;
}

asio::awaitable<void> Settlement::requeue_after_pause(const amqp::Delivery& delivery) {
    asio::steady_timer pause(co_await asio::this_coro::executor, kRefusedPublishBackoff);
    co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
    requeue(delivery);
}

/// Sends the job to the delay ladder as its next attempt and acks the original only once the broker has confirmed
/// the copy: a crash in between leaves two copies (the inbox absorbs the second), never none.
asio::awaitable<void> Settlement::schedule_retry(const amqp::Delivery& delivery, const Envelope& envelope,
                                                 WorkerMetrics::Job& metrics, decision::RetryLater retry,
                                                 const JobLogger& log) {
    const auto next_attempt = retry.counts_attempt ? envelope.attempt + 1 : envelope.attempt;
    const auto delay = std::clamp<std::chrono::milliseconds>(retry.delay, std::chrono::seconds(1), topology::kMaxDelay);
    const auto due = std::chrono::system_clock::now() + std::chrono::ceil<std::chrono::seconds>(delay);
    amqp::Message message = delivery.message;
    message.exchange = topology::delay_entry_exchange();
    message.routing_key = topology::delay_routing_key(delay, envelope.type);
    job_headers::stamp_retry(message.properties.headers, next_attempt, retry.reason, due);
    const auto reason = job_headers::bounded(retry.reason, kLoggedErrorBytes);
    auto [error] = co_await publisher_.async_publish(std::move(message), asio::as_tuple(asio::use_awaitable));
    if (error) {
        log.error("could not schedule attempt {} ({}); requeueing: {}", next_attempt, reason, error.message());
        co_await requeue_after_pause(delivery);
        co_return;
    }
    source_.ack(delivery);
    metrics.retry->Increment();
    metrics.retry_delay->Observe(std::chrono::duration<double>(delay).count());
    ++counts_.retried;
    if (retry.counts_attempt) {
        log.warn("attempt {} failed: {}; attempt {} in {} ms", envelope.attempt, reason, next_attempt, delay.count());
    } else {
        log.info("waiting: {}; attempt {} runs again in {} ms (not counted)", reason, next_attempt, delay.count());
    }
}

asio::awaitable<void> Settlement::park(const amqp::Delivery& delivery, const Envelope& envelope,
                                       WorkerMetrics::Job& metrics, std::chrono::seconds delay, const JobLogger& log) {
    auto message = parked_copy(delivery.message, delay, envelope.type);
    auto [error] = co_await publisher_.async_publish(std::move(message), asio::as_tuple(asio::use_awaitable));
    if (error) {
        log.error("could not park it while paused; requeueing: {}", error.message());
        co_await requeue_after_pause(delivery);
        co_return;
    }
    source_.ack(delivery);
    metrics.parked_paused->Increment();
    ++counts_.parked;
    log.debug("paused: parked for {} s, attempt {} not counted", delay.count(), envelope.attempt);
}

void Settlement::acknowledge_waiting(const amqp::Delivery& delivery, const Envelope& envelope, FlowLimit limit,
                                     WorkerMetrics::Job& metrics, const JobLogger& log) {
    source_.ack(delivery);
    if (limit == FlowLimit::concurrency) {
        ++counts_.waiting;
        metrics.parked_concurrency->Increment();
        log.debug("over its key's concurrency limit: waits in line, attempt {} not counted", envelope.attempt);
    } else {
        ++counts_.waiting_for_token;
        metrics.parked_rate->Increment();
        log.debug("no token under its rate limit: waits in line, attempt {} not counted", envelope.attempt);
    }
}

asio::awaitable<void> Settlement::hand_back(std::vector<amqp::Delivery> deliveries, WorkerMetrics& metrics,
                                            std::chrono::milliseconds timeout) {
    std::vector<amqp::Delivery> parking;
    std::vector<amqp::Message> copies;
    for (auto& delivery : deliveries) {
        if (!source_.is_current(delivery)) {
            continue;
        }
        if (!returns_to_its_queue(delivery)) {
            requeue(delivery);
            continue;
        }
        copies.push_back(parked_copy(delivery.message, kShutdownPark,
                                     topology::job_type_of_routing_key(delivery.message.routing_key)));
        parking.push_back(std::move(delivery));
    }
    if (parking.empty()) {
        co_return;
    }
    const auto errors = co_await amqp::publish_all(publisher_, std::move(copies), timeout);
    std::size_t requeued = 0;
    for (std::size_t index = 0; index < parking.size(); ++index) {
        const auto& delivery = parking[index];
        if (errors[index]) {
            requeue(delivery);
            ++requeued;
            continue;
        }
        source_.ack(delivery);
        metrics.job(delivery.queue, topology::job_type_of_routing_key(delivery.message.routing_key))
            .parked_shutdown->Increment();
        ++counts_.parked_at_shutdown;
    }
    if (requeued > 0) {
        const auto first_error = std::find_if(errors.begin(), errors.end(), [](const auto& e) { return !!e; });
        spdlog::warn("shutdown: {} of {} jobs not started could not be parked ({}); requeued instead", requeued,
                     parking.size(), first_error->message());
    }
}

asio::awaitable<bool> Settlement::dead_letter(const amqp::Delivery& delivery, WorkerMetrics::Job& metrics,
                                              std::uint32_t attempts, Verdict verdict, const TraceContext& trace) {
    const auto dead_letter_queue = topology::dead_letter_queue_name(topology::family_of_queue(delivery.queue));
    amqp::Message message = delivery.message;
    message.exchange.clear();
    message.routing_key = dead_letter_queue;
    job_headers::stamp_failure(
        message.properties.headers,
        {.reason = verdict.reason,
         .error = verdict.error,
         .attempts = attempts,
         .original_routing_key = std::string(topology::job_type_of_routing_key(delivery.message.routing_key)),
         .original_queue = delivery.queue,
         .failed_at = utc_timestamp(std::chrono::system_clock::now()),
         .worker = worker_name_});

    // Logged with the ids as they arrived: the message may be too broken to have parsed into an envelope.
    const auto& properties = delivery.message.properties;
    const auto job_id = or_dash(properties.message_id);
    const auto correlation_id = job_headers::bounded(properties.correlation_id, 128);
    const auto type = job_headers::bounded(topology::job_type_of_routing_key(delivery.message.routing_key), 64);
    const JobLogger log({.job_id = job_id,
                         .type = type,
                         .correlation_id = correlation_id,
                         .queue = delivery.queue,
                         .attempt = attempts,
                         .trace = &trace});
    const auto error_text = job_headers::bounded(verdict.error, kLoggedErrorBytes);
    auto [error] = co_await publisher_.async_publish(std::move(message), asio::as_tuple(asio::use_awaitable));
    if (error) {
        // Never drop the message: it goes back to its queue.
        log.error("could not dead-letter ({}: {}): {}; requeueing", verdict.reason, error_text, error.message());
        co_await requeue_after_pause(delivery);
        co_return false;
    }
    source_.ack(delivery);
    metrics.dead_letter->Increment();
    ++counts_.dead_lettered;
    log.warn("dead-lettered to {}: {}: {}", dead_letter_queue, verdict.reason, error_text);
    co_return true;
}

asio::awaitable<bool> Settlement::compensate(const amqp::Delivery& delivery, const Envelope& envelope,
                                             const Verdict& ending, const JobLogger& log, const TraceContext& trace) {
    constexpr auto kConfirmTimeout = std::chrono::seconds(30);
    const auto* definition = registry_.find(envelope.type);
    if (definition == nullptr || !definition->options.compensate) {
        co_return true;
    }
    std::vector<amqp::Message> messages;
    try {
        for (const auto& row : compensation_messages(
                 envelope, trace, definition->options.compensate(envelope.payload, ending.reason, ending.error))) {
            messages.push_back(outbox_to_message(row));
        }
    } catch (const std::exception& e) {
        // A compensation that cannot be built is a bug in the job type: nothing to retry, the job settles as decided.
        log.error("its compensation could not be built: {}", e.what());
        co_return true;
    }
    const auto count = messages.size();
    if (count == 0) {
        co_return true;
    }
    const auto errors = co_await amqp::publish_all(publisher_, std::move(messages), kConfirmTimeout);
    const auto failed = std::find_if(errors.begin(), errors.end(), [](const auto& error) { return !!error; });
    if (failed != errors.end()) {
        log.error("could not publish its compensation ({} job(s)): {}; requeueing", count, failed->message());
        co_await requeue_after_pause(delivery);
        co_return false;
    }
    log.info("gave up ({}: {}); published its compensation: {} job(s)", ending.reason,
             job_headers::bounded(ending.error, kLoggedErrorBytes), count);
    co_return true;
}

/// Publishes what a job emitted once its transaction has committed. A failure costs the job nothing: the rows stay
/// in the outbox for the sweeper.
asio::awaitable<void> Settlement::publish_emitted(const std::vector<OutboxMessage>& emitted, const JobLogger& log) {
    std::string failure;
    try {
        co_await outbox_.publish(emitted);
    } catch (const std::exception& e) {
        failure = e.what();
    }
    if (!failure.empty()) {
        log.warn("emitted jobs stay in the outbox for the sweeper: {}", failure);
    }
}

}  // namespace conveyor::worker
