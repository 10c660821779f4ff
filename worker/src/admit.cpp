#include "admit.hpp"

#include "conveyor/core/job_headers.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;

JobLogger job_logger(const Envelope& envelope, const amqp::Delivery& delivery, const TraceContext& trace) {
    return JobLogger({.job_id = envelope.job_id,
                      .type = envelope.type,
                      .correlation_id = envelope.correlation_id,
                      .queue = delivery.queue,
                      .attempt = envelope.attempt,
                      .trace = &trace});
}

std::variant<Screened, Refusal> screen(const amqp::Message& message, const EnvelopeLimits& limits,
                                       simdjson::dom::parser& parser, const JobRegistry& registry) {
    auto envelope = parse_envelope(message, limits, parser);
    if (!envelope) {
        return Refusal{{std::string(reason_code(envelope.error().errc)), envelope.error().detail}, 0, "unknown"};
    }
    const auto* definition = registry.find(envelope->type);
    if (definition == nullptr) {
        return Refusal{{"unknown_type", fmt::format("no handler for job type '{}'", envelope->type)},
                       envelope->attempt,
                       envelope->type};
    }
    if (definition->options.validate) {
        if (auto invalid = definition->options.validate(envelope->payload)) {
            return Refusal{{"invalid_payload", std::move(*invalid)}, envelope->attempt, envelope->type};
        }
    }
    return Screened{std::move(*envelope), definition};
}

asio::awaitable<Admission> Admitter::admit(const amqp::Delivery& delivery, simdjson::dom::parser& parser,
                                           const TraceContext& trace) {
    auto screened = screen(delivery.message, settings_.limits, parser, registry_);
    if (auto* refusal = std::get_if<Refusal>(&screened)) {
        co_return std::move(*refusal);
    }
    auto& readable = std::get<Screened>(screened);
    if (control_.cancelled(readable.envelope.job_id)) {
        give_up_promise(readable.envelope, delivery);
        co_return admission::Cancelled{std::move(readable.envelope)};
    }
    if (control_.paused(delivery.queue, readable.envelope.type)) {
        give_up_promise(readable.envelope, delivery);
        co_return admission::Paused{std::move(readable.envelope)};
    }
    AdmittedJob job{std::move(readable.envelope), readable.definition, std::nullopt, false, false, std::nullopt};
    auto admission = co_await admit_job(delivery, trace, job);
    if (job.place && !std::holds_alternative<AdmittedJob>(admission)) {
        concurrency_.release(*job.place, delivery.message.properties.message_id);
    }
    co_return admission;
}

asio::awaitable<Admission> Admitter::admit_job(const amqp::Delivery& delivery, const TraceContext& trace,
                                               AdmittedJob& job) {
    const auto& envelope = job.envelope;
    const auto log = job_logger(envelope, delivery, trace);
    const auto holds_key = co_await unique_keys_.claim(envelope, log);
    if (!holds_key) {
        co_return admission::HandBack{};
    }
    if (!*holds_key) {
        co_return admission::Deduplicated{std::move(job.envelope)};
    }
    // A job that needs the database waits for it, holding its delivery: requeueing would spin it through the queue
    // and count against the broker's delivery limit, and running it would only burn an attempt.
    if (job.definition->options.transaction != TransactionMode::none || delivery.redelivered) {
        const bool available = co_await database_available(log);
        if (!available) {
            co_return admission::HandBack{};
        }
    }
    if (delivery.redelivered) {
        log.debug("redelivered; running again");
        const auto history = co_await judge(envelope.job_id, log);
        if (!history) {
            co_return admission::HandBack{};
        }
        if (history->decision == Quarantine::Decision::dead_letter) {
            co_return Refusal{
                {"delivery_limit", fmt::format("quarantined as poison: a worker died {} times while running it alone "
                                               "(--quarantine-after {})",
                                               history->solo_starts, settings_.quarantine_after)},
                envelope.attempt,
                envelope.type,
                true};
        }
        job.alone = history->decision == Quarantine::Decision::run_alone;
    }
    if (delivery.stored_id) {
        // Taken from its key's line by this worker, with its place.
        job.place = concurrency_.take_claimed(*delivery.stored_id);
    }
    const bool promised =
        amqp::find_text_header(delivery.message.properties.headers, job_headers::kPromised) == "concurrency";
    if (auto held_back = co_await take_flow_limits(job, promised, log)) {
        co_return std::move(*held_back);
    }
    const bool entered = co_await enter_gate(job.alone, log);
    if (!entered) {
        co_return admission::HandBack{};
    }
    job.pass.emplace(quarantine_, job.alone);
    // The waits above can outlast the delivery's session: then the broker has requeued it already, and running it
    // here would only duplicate it (its ack would be dropped).
    if (!source_.is_current(delivery)) {
        co_return admission::Gone{};
    }
    // Paused while it waited at a gate above.
    if (control_.paused(delivery.queue, envelope.type)) {
        co_return admission::Paused{std::move(job.envelope)};
    }
    if (delivery.redelivered) {
        const bool recorded = co_await record_start(job, delivery.queue, log);
        if (!recorded) {
            co_return admission::HandBack{};
        }
        job.start_on_record = true;
    }
    co_return std::move(job);
}

asio::awaitable<std::optional<Admission>> Admitter::take_flow_limits(AdmittedJob& job, bool promised,
                                                                     const JobLogger& log) {
    const auto& envelope = job.envelope;
    auto place = job.place ? std::nullopt : concurrency_.place_of(envelope);
    if (place) {
        const auto verdict = co_await concurrency_.acquire(*place, envelope.job_id, promised, log);
        if (!verdict) {
            co_return admission::HandBack{};
        }
        if (*verdict == ConcurrencyLimits::Verdict::wait) {
            co_return admission::OverLimit{std::move(job.envelope), std::move(*place)};
        }
        job.place = std::move(place);
    }
    // Last, so that a token is not spent on a job that another limit holds back.
    if (auto bucket = rates_.bucket_of(envelope)) {
        const auto verdict = co_await rates_.acquire(*bucket, envelope.job_id, log);
        if (!verdict) {
            co_return admission::HandBack{};
        }
        if (*verdict == RateLimits::Verdict::wait) {
            co_return admission::OverLimit{std::move(job.envelope), std::move(*bucket)};
        }
    }
    co_return std::nullopt;
}

void Admitter::give_up_promise(const Envelope& envelope, const amqp::Delivery& delivery) {
    if (delivery.stored_id) {
        return;  // its place goes back as it is acknowledged
    }
    if (auto place = concurrency_.place_of(envelope)) {
        concurrency_.release(*place, envelope.job_id);
    }
}

asio::awaitable<std::optional<Quarantine::History>> Admitter::judge(const std::string& job_id, const JobLogger& log) {
    std::optional<Quarantine::History> history;
    auto judge = [&]() -> asio::awaitable<void> { history = co_await quarantine_.judge(job_id); };
    const bool judged = co_await database_.run_when_usable(judge, draining_, log);
    co_return judged ? history : std::nullopt;
}

asio::awaitable<bool> Admitter::enter_gate(bool alone, const JobLogger& log) {
    if (!alone && quarantine_.try_enter_shared()) {
        co_return true;
    }
    if (alone) {
        log.warn("was running when a worker died; running it alone to see whether it is poison");
        co_return co_await quarantine_.enter_exclusive(draining_);
    }
    co_return co_await quarantine_.enter_shared(draining_);
}

asio::awaitable<bool> Admitter::record_start(const AdmittedJob& job, const std::string& queue, const JobLogger& log) {
    auto record = [&]() -> asio::awaitable<void> {
        co_await quarantine_.record_start(job.envelope.job_id, queue, job.alone);
    };
    co_return co_await database_.run_when_usable(record, draining_, log);
}

asio::awaitable<bool> Admitter::database_available(const JobLogger& log) {
    if (database_.ok()) {
        co_return true;
    }
    log.debug("waiting for the database");
    co_return co_await database_.wait_until_usable(draining_);
}

void Admitter::stop_waiting() noexcept {
    concurrency_.stop_waiting();
    quarantine_.wake_waiters();
    database_.wake_waiters();
}

}  // namespace conveyor::worker
