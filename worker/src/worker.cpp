#include "conveyor/worker/worker.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <map>
#include <random>
#include <thread>

#include "capacity.hpp"
#include "conveyor/core/amqp.hpp"
#include "conveyor/core/config.hpp"
#include "conveyor/core/http_server.hpp"
#include "conveyor/core/logging.hpp"
#include "conveyor/core/metrics.hpp"
#include "conveyor/core/redaction.hpp"
#include "conveyor/core/topology.hpp"
#include "housekeeping.hpp"
#include "quarantine.hpp"
#include "worker_metrics.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kMaxErrorHeaderBytes = 1024;
// After the grace period the remaining jobs are cancelled; this bounds how long they get to unwind.
constexpr auto kCancelledJobsUnwind = std::chrono::seconds(5);
constexpr auto kDeadLetterFailureBackoff = std::chrono::seconds(1);
constexpr auto kShutdownPoll = std::chrono::milliseconds(10);
// Housekeeping, the outbox cleanup, the database probe and the capacity estimate: the shutdown waits for all four
// to end.
constexpr int kBackgroundCoroutines = 4;
// How often conveyor_workers_needed is recomputed: a few times per Prometheus scrape or KEDA poll (15 s).
constexpr auto kCapacityInterval = std::chrono::seconds(5);
// How soon the capacity estimate notices the shutdown.
constexpr auto kCapacityTick = std::chrono::milliseconds(250);
// Connect, handshake and query timeout of the capacity estimate's connection.
constexpr auto kMonitorTimeout = std::chrono::milliseconds(2000);
constexpr auto kDatabasePoll = std::chrono::milliseconds(100);

std::string bounded(std::string_view text, std::size_t limit) {
    if (text.size() <= limit) {
        return std::string(text);
    }
    // Cut before a UTF-8 continuation byte, never through a character.
    while (limit > 0 && (static_cast<unsigned char>(text[limit]) & 0xC0U) == 0x80U) {
        --limit;
    }
    return fmt::format("{}…", text.substr(0, limit));
}

pg::Settings database_settings(const WorkerSettings& settings) {
    pg::Settings database;
    database.url = settings.pg_url;
    database.pool_size = settings.pg_pool_size;
    database.statement_timeout = settings.pg_statement_timeout;
    database.application_name = fmt::format("conveyor-worker {}", settings.name);
    return database;
}

amqp::ConnectionSettings connection_settings(const WorkerSettings& settings, std::string_view role,
                                             amqp::ConnectionObserver* observer) {
    amqp::ConnectionSettings connection;
    connection.url = amqp::Url::parse(settings.amqp_url);
    connection.name = fmt::format("conveyor-worker {} {}", settings.name, role);
    connection.tls_ca_file = settings.amqp_ca_file;
    connection.heartbeat = settings.amqp_heartbeat;
    connection.observer = observer;
    return connection;
}

/// The capacity estimate's own connection. Its queries block the connection's thread until the broker answers,
/// so they must not run on the consumer's (deliveries would wait, and a timeout would drop the connection and
/// requeue every job in flight) nor on the publisher's (which a resource alarm blocks). A short timeout bounds
/// what a stalled broker costs it.
amqp::ConnectionSettings monitor_settings(const WorkerSettings& settings) {
    auto connection = connection_settings(settings, "monitor", nullptr);
    connection.connect_timeout = kMonitorTimeout;
    return connection;
}

/// One of the pool's coroutines. Each runs on its own strand so that the shutdown can cancel it safely.
struct Slot {
    explicit Slot(asio::io_context& io) : strand(asio::make_strand(io)), deadline(strand) {}
    asio::strand<asio::io_context::executor_type> strand;
    /// Cancels the running handler: at its deadline, or when the shutdown's grace period is over.
    asio::cancellation_signal cancel;
    /// The watchdog's timer. It is armed for the running job's deadline and re-armed only when it fires or a
    /// job with an earlier deadline starts, so a job that finishes in time costs no timer operation at all.
    asio::steady_timer deadline;
    Clock::time_point armed_until;
    std::optional<Clock::time_point> job_deadline;  ///< set while a job runs
    bool timed_out = false;
    bool closed = false;
};

struct Verdict {
    std::string reason;
    std::string error;
};

std::string or_dash(std::string_view text, std::size_t limit) {
    if (text.empty()) {
        return "-";
    }
    return bounded(text, limit);
}

}  // namespace

class Worker::Impl {
  public:
    Impl(asio::io_context& io, WorkerSettings settings, const JobRegistry& registry,
         std::shared_ptr<prometheus::Registry> prometheus)
        : io_(io),
          settings_(std::move(settings)),
          registry_(registry),
          prometheus_(std::move(prometheus)),
          metrics_(*prometheus_, settings_.families, registry_),
          batches_(io_, static_cast<std::size_t>(settings_.prefetch) * settings_.families.size()),
          jobs_(io_, static_cast<std::size_t>(settings_.prefetch) * settings_.families.size()),
          shutdown_requests_(io_, 1),
          consumer_(connection_settings(settings_, "consumer", &metrics_.consumer_observer),
                    topology::job_topology(settings_.families)),
          publisher_(connection_settings(settings_, "publisher", &metrics_.publisher_observer), {}),
          monitor_(monitor_settings(settings_), {}),
          http_(io_.get_executor(), settings_.http_address, settings_.http_port),
          pool_(io_.get_executor(), database_settings(settings_)),
          quarantine_(pool_, settings_.quarantine_after),
          outbox_(pool_, publisher_) {
        limits_.max_body_bytes = settings_.max_message_bytes;
        for (const auto& type : registry_.types()) {
            policies_.emplace(type, effective_retry_policy(settings_, *registry_.find(type)));
        }
    }

    asio::awaitable<WorkerStats> run() {
        serve_http();
        for (const auto& family : settings_.families) {
            consumer_.add_consumer({topology::queue_name(family), static_cast<std::uint16_t>(settings_.prefetch)},
                                   batches_);
        }
        consumer_.start();
        publisher_.start();
        monitor_.start();
        asio::co_spawn(io_, dispatch(), log_failure("delivery dispatcher"));
        HousekeepingSettings chores;
        chores.outbox_sweep_interval = settings_.outbox_sweep_interval;
        chores.inbox_retention = settings_.inbox_retention;
        asio::co_spawn(io_, run_housekeeping(pool_, outbox_, chores, database_, stopping_),
                       [this](const std::exception_ptr& error) {
                           log_failure("housekeeping")(error);
                           ++background_done_;
                       });
        asio::co_spawn(io_, run_outbox_cleanup(outbox_, database_, stopping_), [this](const std::exception_ptr& error) {
            log_failure("outbox cleanup")(error);
            ++background_done_;
        });
        asio::co_spawn(
            io_, run_database_probe(pool_, chores.probe_interval, metrics_.outbox_pending(), database_, stopping_),
            [this](const std::exception_ptr& error) {
                log_failure("database probe")(error);
                ++background_done_;
            });
        asio::co_spawn(io_, estimate_capacity(), [this](const std::exception_ptr& error) {
            log_failure("capacity estimate")(error);
            ++background_done_;
        });
        slots_.reserve(settings_.concurrency);
        for (unsigned i = 0; i < settings_.concurrency; ++i) {
            auto& slot = *slots_.emplace_back(std::make_unique<Slot>(io_));
            // The slot's signal cancels whatever the coroutine awaits: the running job, at its deadline or when the
            // shutdown's grace period is over.
            asio::co_spawn(slot.strand, work(slot),
                           asio::bind_cancellation_slot(slot.cancel.slot(), [this](const std::exception_ptr& error) {
                               log_failure("worker coroutine")(error);
                               ++finished_slots_;
                           }));
            asio::co_spawn(slot.strand, watch(slot), log_failure("job watchdog"));
        }
        spdlog::info("worker {} started: queues {}, concurrency {}, prefetch {}, {} threads, job timeout {} ms",
                     settings_.name, fmt::join(settings_.families, ","), settings_.concurrency, settings_.prefetch,
                     settings_.threads, settings_.job_timeout.count());

        co_await shutdown_requests_.async_receive(asio::as_tuple(asio::use_awaitable));
        co_await drain();
        stopping_ = true;
        // Nothing publishes after the drain but an outbox sweep, which must not wait for a broker that is gone.
        publisher_.stop();
        co_await housekeeping_finished();
        monitor_stopper_.join();
        http_.stop();
        spdlog::info("worker {} stopped: {} succeeded, {} retried, {} dead-lettered, {} duplicates, {} requeued",
                     settings_.name, stats_.succeeded.load(), stats_.retried.load(), stats_.dead_lettered.load(),
                     stats_.duplicates.load(), stats_.requeued.load());
        co_return WorkerStats{stats_.succeeded, stats_.retried, stats_.dead_lettered, stats_.requeued};
    }

    void shutdown() { shutdown_requests_.try_send(error_code{}); }

  private:
    void serve_http() {
        http_.get("/healthz", [] { return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"}; });
        http_.get("/readyz", [this] {
            if (draining_) {
                return HttpResponse{503, "text/plain; charset=utf-8", "draining\n"};
            }
            if (!consumer_.consuming() || !publisher_.connected()) {
                return HttpResponse{503, "text/plain; charset=utf-8",
                                    fmt::format("broker not connected: {}\n", consumer_.last_error())};
            }
            if (!database_.ok()) {
                return HttpResponse{
                    503, "text/plain; charset=utf-8",
                    fmt::format("database {} not usable: {}\n", redacted_url(settings_.pg_url), database_.why_down())};
            }
            return HttpResponse{200, "text/plain; charset=utf-8", "ready\n"};
        });
        http_.get("/metrics", [this] {
            return HttpResponse{200, kPrometheusContentType, serialize_metrics(*prometheus_)};
        });
        http_.set_limits({.max_connections = settings_.http_max_connections});
        http_.export_metrics(*prometheus_);
        http_.start();
    }

    asio::awaitable<void> drain() {
        const auto grace_deadline = Clock::now() + settings_.shutdown_grace;
        draining_ = true;
        // Closing a connection to a stalled broker takes its timeouts: the monitor's closes alongside the drain.
        monitor_stopper_ = std::jthread([this] { monitor_.stop(); });
        spdlog::info("shutdown: cancelling consumers; jobs in flight get {} ms", settings_.shutdown_grace.count());
        // The broker confirms the cancel within a round trip; a stalled one must not eat the grace period, so the
        // wait for it is bounded by the grace deadline (the connection's close requeues whatever follows).
        auto cancelled = std::make_shared<asio::experimental::concurrent_channel<void(error_code)>>(io_, 1);
        consumer_.async_cancel_consumers([cancelled](error_code) { cancelled->try_send(error_code{}); });
        asio::steady_timer cancel_deadline(co_await asio::this_coro::executor, grace_deadline);
        const auto confirmed = co_await (cancelled->async_receive(asio::as_tuple(asio::use_awaitable)) ||
                                         cancel_deadline.async_wait(asio::as_tuple(asio::use_awaitable)));
        if (confirmed.index() == 1) {
            spdlog::warn("shutdown: the broker did not confirm the consumer cancel within the grace period");
        }
        // Deliveries that arrived before the cancel was confirmed but have not started go straight back; closing
        // the batch channel makes the dispatcher return the rest and close the job channel, which ends the slots.
        while (batches_.try_receive([this](error_code, const amqp::DeliveryBatch& batch) {
            for (const auto& delivery : batch) {
                requeue(delivery);
            }
        })) {
        }
        batches_.close();

        if (co_await slots_finished_by(grace_deadline)) {
            co_return;
        }
        spdlog::warn("shutdown: grace period over with {} jobs running; cancelling them for requeue",
                     slots_.size() - finished_slots_);
        aborting_ = true;
        for (auto& slot : slots_) {
            asio::post(slot->strand, [&slot = *slot] { slot.cancel.emit(asio::cancellation_type::terminal); });
        }
        if (!co_await slots_finished_by(Clock::now() + kCancelledJobsUnwind)) {
            spdlog::error("shutdown: {} jobs did not unwind; closing the connection requeues them",
                          slots_.size() - finished_slots_);
        }
    }

    /// Sets conveyor_workers_needed every kCapacityInterval from the broker's counts of the queues this worker
    /// consumes (asked on the monitor connection) and its own job rates and durations (see CapacityEstimator).
    /// Without the broker it keeps the last value: a scale-in decision on no data would be a guess.
    asio::awaitable<void> estimate_capacity() {
        CapacityEstimator estimator(
            {.duration_bounds = WorkerMetrics::duration_bounds(), .concurrency = settings_.concurrency});
        asio::steady_timer tick(co_await asio::this_coro::executor);
        auto next_estimate = Clock::now();
        std::string last_failure;
        while (!stopping_) {
            if (Clock::now() >= next_estimate && monitor_.connected() && !draining_) {
                next_estimate = Clock::now() + kCapacityInterval;
                std::map<std::string, QueueObservation> queues;
                std::string failure;
                for (const auto& family : settings_.families) {
                    const auto queue = topology::queue_name(family);
                    auto counting = monitor_.async_queue_counts(queue, asio::as_tuple(asio::use_awaitable));
                    auto [error, counts] = co_await std::move(counting);
                    if (error) {
                        failure = fmt::format("{}: {}", queue, error.message());
                        break;
                    }
                    auto totals = metrics_.totals(queue);
                    queues.emplace(
                        queue, QueueObservation{counts.messages, counts.consumers, totals.settled,
                                                metrics_.in_flight(queue).Value(), std::move(totals.duration_counts)});
                }
                if (!failure.empty() && failure != last_failure && !draining_) {
                    spdlog::warn("capacity estimate: cannot count {}; conveyor_workers_needed keeps its value",
                                 failure);
                }
                last_failure = failure;
                const auto needed =
                    failure.empty() ? estimator.observe(Clock::now(), queues) : std::optional<std::uint32_t>();
                if (needed) {
                    metrics_.workers_needed().Set(static_cast<double>(*needed));
                    for (const auto& [queue, estimate] : estimator.estimates()) {
                        spdlog::debug("capacity: {} arrivals {:.1f}/s, p95 {:.3f} s, {:.1f} slots", queue,
                                      estimate.arrivals_per_second, estimate.p95_seconds, estimate.slots);
                    }
                }
            }
            tick.expires_after(kCapacityTick);
            co_await tick.async_wait(asio::as_tuple(asio::use_awaitable));
        }
    }

    /// The background coroutines notice `stopping_` within a tick, or once their current statement ends (bounded
    /// by the statement timeout); a sweep's publish fails at once on the stopped publisher.
    asio::awaitable<void> housekeeping_finished() {
        asio::steady_timer tick(co_await asio::this_coro::executor);
        while (background_done_ < kBackgroundCoroutines) {
            tick.expires_after(kShutdownPoll);
            co_await tick.async_wait(asio::use_awaitable);
        }
    }

    /// Whether every slot coroutine has ended by the deadline. Polled, only during shutdown: a counter cannot
    /// lose a wake-up the way a cancelled channel receive can.
    asio::awaitable<bool> slots_finished_by(Clock::time_point deadline) {
        asio::steady_timer tick(co_await asio::this_coro::executor);
        while (finished_slots_ < slots_.size()) {
            if (Clock::now() >= deadline) {
                co_return false;
            }
            tick.expires_after(kShutdownPoll);
            co_await tick.async_wait(asio::use_awaitable);
        }
        co_return true;
    }

    /// Hands a delivery back to the broker for another attempt (here or on another worker).
    void requeue(const amqp::Delivery& delivery) {
        consumer_.reject(delivery, true);
        ++stats_.requeued;
    }

    /// Fans each batch from the connection thread out to the slots. Running on the worker's own threads, it
    /// wakes slots without system calls; only the batch itself crossed threads.
    asio::awaitable<void> dispatch() {
        while (true) {
            auto [error, batch] = co_await batches_.async_receive(asio::as_tuple(asio::use_awaitable));
            if (error) {
                break;  // closed at shutdown
            }
            for (auto& delivery : batch) {
                // try_send moves the delivery only when it succeeds.
                if (!jobs_.try_send(error_code{}, std::move(delivery))) {
                    co_await jobs_.async_send(error_code{}, std::move(delivery),  // NOLINT(bugprone-use-after-move)
                                              asio::as_tuple(asio::use_awaitable));
                }
            }
        }
        while (jobs_.try_receive([this](error_code, const amqp::Delivery& delivery) { requeue(delivery); })) {
        }
        jobs_.close();
    }

    asio::awaitable<void> work(Slot& slot) {
        try {
            co_await serve_jobs(slot);
        } catch (...) {
            close(slot);
            throw;
        }
        close(slot);
    }

    static void close(Slot& slot) {
        slot.closed = true;  // ends the watchdog
        slot.deadline.cancel();
    }

    asio::awaitable<void> serve_jobs(Slot& slot) {
        simdjson::dom::parser parser;
        while (true) {
            // A cancellation is meant for the job it interrupted (or one that ended as it fired); it must not
            // fail the waits that follow.
            co_await asio::this_coro::reset_cancellation_state();
            auto [error, delivery] = co_await jobs_.async_receive(asio::as_tuple(asio::use_awaitable));
            if (error == asio::error::operation_aborted && !aborting_) {
                continue;
            }
            if (error) {
                co_return;  // the channel closed at shutdown
            }
            if (!consumer_.is_current(delivery)) {
                continue;  // its connection dropped, so the broker has requeued it already
            }
            if (draining_) {
                requeue(delivery);
                continue;
            }
            co_await process(delivery, parser, slot);
        }
    }

    /// Cancels the slot's job when it passes its deadline.
    asio::awaitable<void> watch(Slot& slot) const {
        while (!slot.closed) {
            const bool watching = slot.job_deadline && !slot.timed_out;
            slot.armed_until = watching ? *slot.job_deadline : Clock::now() + settings_.job_timeout;
            slot.deadline.expires_at(slot.armed_until);
            co_await slot.deadline.async_wait(asio::as_tuple(asio::use_awaitable));
            if (slot.job_deadline && !slot.timed_out && Clock::now() >= *slot.job_deadline) {
                slot.timed_out = true;
                slot.cancel.emit(asio::cancellation_type::terminal);
            }
        }
    }

    asio::awaitable<void> process(const amqp::Delivery& delivery, simdjson::dom::parser& parser, Slot& slot) {
        const auto family = topology::family_of_queue(delivery.queue);
        // The delivery's span: the job's run, or its dead-lettering if it cannot run.
        const auto trace =
            TraceContext::start_span(amqp::find_text_header(delivery.message.properties.headers, "traceparent"));
        auto envelope = parse_envelope(delivery.message, limits_, parser);
        if (!envelope) {
            Verdict verdict{std::string(reason_code(envelope.error().errc)), envelope.error().detail};
            auto& unknown = metrics_.job(delivery.queue, "unknown");
            co_await dead_letter(delivery, family, unknown, 0, std::move(verdict), trace);
            co_return;
        }
        const auto* definition = registry_.find(envelope->type);
        if (definition == nullptr) {
            Verdict verdict{"unknown_type", fmt::format("no handler for job type '{}'", envelope->type)};
            auto& unknown = metrics_.job(delivery.queue, envelope->type);
            co_await dead_letter(delivery, family, unknown, envelope->attempt, std::move(verdict), trace);
            co_return;
        }

        auto& metrics = metrics_.job(delivery.queue, envelope->type);
        const JobLogger log({.job_id = envelope->job_id,
                             .type = envelope->type,
                             .correlation_id = envelope->correlation_id,
                             .queue = delivery.queue,
                             .attempt = envelope->attempt,
                             .trace = &trace});
        if (definition->options.validate) {
            if (auto invalid = definition->options.validate(envelope->payload)) {
                Verdict verdict{"invalid_payload", std::move(*invalid)};
                co_await dead_letter(delivery, family, metrics, envelope->attempt, std::move(verdict), trace);
                co_return;
            }
        }

        // A job that needs the database waits for it, holding its delivery: requeueing would spin it through the
        // queue and count against the broker's delivery limit, and running it would only burn an attempt.
        // (No co_await inside && or ?: in this file: g++ 12 mishandles temporaries there.)
        if (definition->options.transaction != TransactionMode::none || delivery.redelivered) {
            const bool available = co_await database_available(log);
            if (!available) {
                requeue(delivery);  // the worker is draining
                co_return;
            }
        }

        // Only a redelivered job can have been running when a worker died: read its record before running it.
        auto admission = Quarantine::Decision::run;
        if (delivery.redelivered) {
            log.debug("redelivered; running again");
            std::optional<Quarantine::History> history;
            while (!history) {
                try {
                    history = co_await quarantine_.judge(envelope->job_id);
                } catch (const pg::Error& e) {
                    database_lost(e);
                }
                if (!history) {
                    const bool available = co_await database_available(log);
                    if (!available) {
                        requeue(delivery);
                        co_return;
                    }
                }
            }
            admission = history->decision;
            if (admission == Quarantine::Decision::dead_letter) {
                Verdict poison{"delivery_limit",
                               fmt::format("quarantined as poison: a worker died {} times while running it alone "
                                           "(--quarantine-after {})",
                                           history->solo_starts, settings_.quarantine_after)};
                // Its record is the evidence: it is cleared only once the job is safely in its dead-letter queue.
                const bool quarantined =
                    co_await dead_letter(delivery, family, metrics, envelope->attempt, std::move(poison), trace);
                if (quarantined) {
                    co_await forget_start(envelope->job_id, log);
                }
                co_return;
            }
        }
        const bool alone = admission == Quarantine::Decision::run_alone;
        bool entered = !alone && quarantine_.try_enter_shared();
        if (!entered) {
            if (alone) {
                log.warn("was running when a worker died; running it alone to see whether it is poison");
                entered = co_await quarantine_.enter_exclusive(draining_);
            } else {
                entered = co_await quarantine_.enter_shared(draining_);
            }
        }
        if (!entered) {
            requeue(delivery);  // the worker is draining
            co_return;
        }
        Quarantine::Pass pass(quarantine_, alone);
        // The waits above can outlast the delivery's session: then the broker has requeued it already, and
        // running it here would only duplicate it (its ack would be dropped).
        if (!consumer_.is_current(delivery)) {
            co_return;
        }
        // The start must be on record before the job runs: it is the evidence if the job kills the process.
        for (bool recorded = !delivery.redelivered; !recorded;) {
            try {
                co_await quarantine_.record_start(envelope->job_id, delivery.queue, alone);
                recorded = true;
            } catch (const pg::Error& e) {
                database_lost(e);
            }
            if (!recorded) {
                const bool available = co_await database_available(log);
                if (!available) {
                    pass.release();
                    requeue(delivery);
                    co_return;
                }
            }
        }

        auto& in_flight = metrics_.in_flight(delivery.queue);
        metrics.started->Increment();
        in_flight.Increment();
        if (envelope->enqueued_at) {
            const std::chrono::duration<double> waited = std::chrono::system_clock::now() - *envelope->enqueued_at;
            metrics.queue_wait->Observe(std::max(0.0, waited.count()));
        }
        const auto timeout =
            definition->options.timeout.count() > 0 ? definition->options.timeout : settings_.job_timeout;
        const auto started = Clock::now();
        JobContext context(*envelope, trace, log, started + timeout, &pool_);

        // The watchdog emits the slot's cancellation signal at the deadline; the shutdown does when its grace
        // period is over. Either way the handler's pending operation fails with operation_aborted.
        slot.timed_out = false;
        slot.job_deadline = started + timeout;
        if (*slot.job_deadline < slot.armed_until) {
            slot.deadline.cancel();  // the watchdog waits for a later time; wake it to re-arm
        }
        std::optional<Outcome> outcome;
        bool duplicate = false;
        std::string failure;
        bool permanent = false;
        try {
            outcome = co_await run_handler(*definition, context, duplicate);
        } catch (const PermanentError& e) {
            failure = e.what();
            permanent = true;
        } catch (const std::exception& e) {
            failure = e.what();
        }
        slot.job_deadline.reset();
        pass.release();
        // A cancelled coroutine fails every later wait at once; what follows (dead-lettering) must still run.
        co_await asio::this_coro::reset_cancellation_state();
        // The worker survived the job, whatever its outcome: it is no suspect any more.
        if (delivery.redelivered) {
            co_await forget_start(envelope->job_id, log);
        }
        // Interrupted by the shutdown: whatever the handler made of its cancellation, the job goes back to the
        // queue for another worker, unless it had finished.
        const bool interrupted = aborting_ && !slot.timed_out;
        if (interrupted && !(outcome && std::holds_alternative<Success>(*outcome))) {
            in_flight.Decrement();
            log.warn("cancelled at shutdown; requeued");
            requeue(delivery);
            co_return;
        }
        if (!outcome) {
            // A timeout or an escaped exception is a transient failure unless the exception says otherwise.
            if (slot.timed_out) {
                outcome = Retry{{}, fmt::format("job exceeded its deadline of {} ms", timeout.count())};
            } else if (permanent) {
                outcome = DeadLetter{"permanent_failure", std::move(failure)};
            } else {
                outcome = Retry{{}, std::move(failure)};
            }
        }
        metrics.duration->Observe(std::chrono::duration<double>(Clock::now() - started).count());
        in_flight.Decrement();

        if (duplicate) {
            consumer_.ack(delivery);
            metrics.duplicate->Increment();
            ++stats_.duplicates;
            log.info("duplicate: already processed (found in the inbox); acknowledged without running");
            co_return;
        }
        if (std::holds_alternative<Success>(*outcome)) {
            consumer_.ack(delivery);
            metrics.success->Increment();
            ++stats_.succeeded;
            log.debug("attempt {} succeeded", envelope->attempt);
            if (!context.emitted().empty()) {
                co_await publish_emitted(context.emitted(), log);
            }
            co_return;
        }
        if (auto* retry = std::get_if<Retry>(&*outcome)) {
            const auto& policy = policies_.at(envelope->type);
            if (!retry->counts_attempt) {
                const auto delay = std::max(retry->after, policy.delay_after(1, {}, unit_random()));
                co_await schedule_retry(delivery, *envelope, metrics, delay, std::move(retry->reason), false, log);
                co_return;
            }
            if (envelope->attempt < policy.max_attempts) {
                const auto delay = policy.delay_after(envelope->attempt, retry->after, unit_random());
                co_await schedule_retry(delivery, *envelope, metrics, delay, std::move(retry->reason), true, log);
                co_return;
            }
            Verdict exhausted{
                slot.timed_out ? "timeout" : "attempts_exhausted",
                fmt::format("attempt {} of {} failed: {}", envelope->attempt, policy.max_attempts, retry->reason)};
            co_await dead_letter(delivery, family, metrics, envelope->attempt, std::move(exhausted), trace);
            co_return;
        }
        auto& dead = std::get<DeadLetter>(*outcome);
        Verdict verdict{dead.reason.empty() ? "permanent_failure" : std::move(dead.reason), std::move(dead.error)};
        co_await dead_letter(delivery, family, metrics, envelope->attempt, std::move(verdict), trace);
    }

    /// Runs the handler; a transactional one inside a transaction that first claims the job in the inbox, so
    /// that its effects, the claim and its emitted jobs commit together or not at all.
    asio::awaitable<Outcome> run_handler(const JobDefinition& definition, JobContext& context, bool& duplicate) {
        const auto mode = definition.options.transaction;
        if (mode == TransactionMode::none) {
            auto outcome = co_await definition.handler(context);
            co_return outcome;
        }
        std::optional<pg::Transaction> transaction;
        if (mode == TransactionMode::per_job) {
            const bool claimed = co_await claim_in_transaction(context, transaction);
            if (!claimed) {
                duplicate = true;
                co_return Success{};
            }
            context.bind_transaction(&*transaction);
        } else {
            context.set_transaction_opener(
                [this, &context, &transaction, &duplicate]() -> asio::awaitable<pg::Transaction*> {
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
            // The opener and the binding refer to this frame's locals: they must not outlive it in the context.
            context.set_transaction_opener({});
            context.bind_transaction(nullptr);
            context.emitted().clear();
            throw;
        }
        auto outcome = std::move(*handled);
        context.set_transaction_opener({});
        const bool succeeded = std::holds_alternative<Success>(outcome) && !duplicate;
        if (!succeeded) {
            context.bind_transaction(nullptr);
            context.emitted().clear();  // staged for a transaction that never commits
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
            co_return outcome;
        }
        co_await context.write_outbox();
        context.bind_transaction(nullptr);
        co_await transaction->commit();
        co_return outcome;
    }

    /// Begins the job's transaction and records the job in the inbox; false (rolled back) if it is there already.
    asio::awaitable<bool> claim_in_transaction(const JobContext& context, std::optional<pg::Transaction>& transaction) {
        std::optional<pg::Result> claim;
        try {
            auto begun = co_await pool_.begin();
            transaction.emplace(std::move(begun));
            auto claimed = co_await transaction->query(
                "INSERT INTO conveyor.inbox (message_id, type) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                context.job_id(), context.type());
            claim.emplace(std::move(claimed));
        } catch (const pg::Error& e) {
            if (e.sqlstate().starts_with("08")) {
                database_lost(e);  // later jobs wait for the database instead of failing like this one
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

    /// Runs bookkeeping whose failure the job must not pay for, logging what the failure means.
    static asio::awaitable<void> best_effort(asio::awaitable<void> work, const JobLogger& log,
                                             std::string_view consequence) {
        std::string failure;
        try {
            co_await std::move(work);
        } catch (const std::exception& e) {
            failure = e.what();
        }
        if (!failure.empty()) {
            log.warn("{}: {}", consequence, failure);
        }
    }

    /// Publishes what a job emitted once its transaction has committed.
    asio::awaitable<void> publish_emitted(const std::vector<OutboxMessage>& emitted, const JobLogger& log) {
        auto publishing = publish_outbox_rows(emitted);  // named: no temporaries inside co_await for g++ 12
        co_await best_effort(std::move(publishing), log, "emitted jobs stay in the outbox for the sweeper");
    }

    asio::awaitable<void> publish_outbox_rows(const std::vector<OutboxMessage>& emitted) {
        co_await outbox_.publish(emitted);
    }

    /// Harmless if it fails: the job runs alone if it ever comes back, and the record is pruned with the inbox.
    asio::awaitable<void> forget_start(const std::string& job_id, const JobLogger& log) {
        auto clearing = quarantine_.record_end(job_id);
        co_await best_effort(std::move(clearing), log, "could not clear its execution record");
    }

    /// Waits until the housekeeping probe finds the database reachable; false if the worker starts draining first.
    asio::awaitable<bool> database_available(const JobLogger& log) {
        if (database_.ok()) {
            co_return true;
        }
        log.debug("waiting for the database");
        asio::steady_timer tick(co_await asio::this_coro::executor);
        while (!database_.ok()) {
            if (draining_) {
                co_return false;
            }
            tick.expires_after(kDatabasePoll);
            co_await tick.async_wait(asio::as_tuple(asio::use_awaitable));
        }
        co_return true;
    }

    /// The worker's own statement failed (lost connection, missing schema …): jobs that need the database wait
    /// until the housekeeping probe finds it usable again.
    void database_lost(const pg::Error& error) {
        if (database_.set_down(error.what())) {
            spdlog::error("database not usable: {}; jobs that need it wait", error.what());
        }
    }

    /// Sends the job to the delay ladder as its next attempt and acks the original only once the broker has
    /// confirmed the copy: a crash in between leaves two copies (the inbox absorbs the second), never none.
    asio::awaitable<void> schedule_retry(const amqp::Delivery& delivery, const Envelope& envelope,
                                         WorkerMetrics::Job& metrics, std::chrono::milliseconds delay,
                                         std::string reason, bool counts_attempt, const JobLogger& log) {
        const auto next_attempt = counts_attempt ? envelope.attempt + 1 : envelope.attempt;
        delay = std::clamp<std::chrono::milliseconds>(delay, std::chrono::seconds(1), topology::kMaxDelay);
        const auto due = std::chrono::system_clock::now() + std::chrono::ceil<std::chrono::seconds>(delay);
        amqp::Message message = delivery.message;
        message.exchange = topology::delay_entry_exchange();
        message.routing_key = topology::delay_routing_key(delay, envelope.type);
        auto& headers = message.properties.headers;
        amqp::set_header(headers, "x-conveyor-attempt", std::int64_t{next_attempt});
        amqp::set_header(headers, "x-conveyor-error", bounded(reason, kMaxErrorHeaderBytes));
        amqp::set_header(
            headers, "x-conveyor-retry-at",
            std::int64_t{std::chrono::duration_cast<std::chrono::milliseconds>(due.time_since_epoch()).count()});
        auto [error] = co_await publisher_.async_publish(std::move(message), asio::as_tuple(asio::use_awaitable));
        if (!error) {
            consumer_.ack(delivery);
            metrics.retry->Increment();
            metrics.retry_delay->Observe(std::chrono::duration<double>(delay).count());
            ++stats_.retried;
            if (counts_attempt) {
                log.warn("attempt {} failed: {}; attempt {} in {} ms", envelope.attempt, bounded(reason, 256),
                         next_attempt, delay.count());
            } else {
                log.info("waiting: {}; attempt {} runs again in {} ms (not counted)", bounded(reason, 256),
                         next_attempt, delay.count());
            }
            co_return;
        }
        log.error("could not schedule attempt {} ({}); requeueing: {}", next_attempt, bounded(reason, 256),
                  error.message());
        asio::steady_timer pause(co_await asio::this_coro::executor, kDeadLetterFailureBackoff);
        co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
        requeue(delivery);
    }

    /// Each I/O thread draws retry jitter from its own generator: no lock on the failure path.
    static double unit_random() {
        thread_local std::mt19937_64 generator{std::random_device{}()};
        return std::uniform_real_distribution<double>(0.0, 1.0)(generator);
    }

    /// Returns whether the dead letter is confirmed (and the original acked); otherwise the original is requeued.
    asio::awaitable<bool> dead_letter(const amqp::Delivery& delivery, const std::string& family,
                                      WorkerMetrics::Job& metrics, std::uint32_t attempts, Verdict verdict,
                                      const TraceContext& trace) {
        amqp::Message message = delivery.message;
        message.exchange.clear();
        message.routing_key = topology::dead_letter_queue_name(family);
        auto& headers = message.properties.headers;
        amqp::set_header(headers, "x-conveyor-reason", verdict.reason);
        amqp::set_header(headers, "x-conveyor-error", bounded(verdict.error, kMaxErrorHeaderBytes));
        amqp::set_header(headers, "x-conveyor-attempts", std::int64_t{attempts});
        amqp::set_header(headers, "x-conveyor-original-routing-key",
                         std::string(topology::job_type_of_routing_key(delivery.message.routing_key)));
        amqp::set_header(headers, "x-conveyor-original-queue", delivery.queue);
        amqp::set_header(headers, "x-conveyor-failed-at", utc_timestamp(std::chrono::system_clock::now()));
        amqp::set_header(headers, "x-conveyor-worker", settings_.name);

        // Logged with the ids as they arrived: the message may be too broken to have parsed into an envelope.
        const auto& properties = delivery.message.properties;
        const auto job_id = or_dash(properties.message_id, 128);
        const auto correlation_id = bounded(properties.correlation_id, 128);
        const auto type = bounded(topology::job_type_of_routing_key(delivery.message.routing_key), 64);
        const JobLogger log({.job_id = job_id,
                             .type = type,
                             .correlation_id = correlation_id,
                             .queue = delivery.queue,
                             .attempt = attempts,
                             .trace = &trace});
        auto [error] = co_await publisher_.async_publish(std::move(message), asio::as_tuple(asio::use_awaitable));
        if (!error) {
            consumer_.ack(delivery);
            metrics.dead_letter->Increment();
            ++stats_.dead_lettered;
            log.warn("dead-lettered to {}: {}: {}", topology::dead_letter_queue_name(family), verdict.reason,
                     bounded(verdict.error, 256));
            co_return true;
        }
        // Never drop the message: put it back, after a pause so a broken dead-letter queue cannot make it spin.
        log.error("could not dead-letter ({}: {}): {}; requeueing", verdict.reason, bounded(verdict.error, 256),
                  error.message());
        asio::steady_timer pause(co_await asio::this_coro::executor, kDeadLetterFailureBackoff);
        co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
        requeue(delivery);
        co_return false;
    }

    asio::io_context& io_;
    WorkerSettings settings_;
    const JobRegistry& registry_;
    EnvelopeLimits limits_;
    std::map<std::string, RetryPolicy, std::less<>> policies_;
    std::shared_ptr<prometheus::Registry> prometheus_;
    WorkerMetrics metrics_;
    amqp::DeliveryChannel batches_;
    asio::experimental::concurrent_channel<void(error_code, amqp::Delivery)> jobs_;
    std::atomic<std::size_t> finished_slots_{0};
    asio::experimental::concurrent_channel<void(error_code)> shutdown_requests_;
    amqp::Connection consumer_;
    amqp::Connection publisher_;
    amqp::Connection monitor_;
    HttpServer http_;
    pg::Pool pool_;
    Quarantine quarantine_;
    OutboxRelay outbox_;
    DatabaseHealth database_;
    std::atomic<bool> stopping_{false};
    std::atomic<int> background_done_{0};
    std::vector<std::unique_ptr<Slot>> slots_;
    std::atomic<bool> draining_{false};
    std::atomic<bool> aborting_{false};
    std::jthread monitor_stopper_;  ///< after monitor_: joined before the connection is destroyed
    struct {
        std::atomic<std::uint64_t> succeeded{0};
        std::atomic<std::uint64_t> retried{0};
        std::atomic<std::uint64_t> duplicates{0};
        std::atomic<std::uint64_t> dead_lettered{0};
        std::atomic<std::uint64_t> requeued{0};
    } stats_;
};

Worker::Worker(asio::io_context& io, WorkerSettings settings, const JobRegistry& registry,
               std::shared_ptr<prometheus::Registry> metrics)
    : impl_(std::make_unique<Impl>(io, std::move(settings), registry, std::move(metrics))) {}

Worker::~Worker() = default;

asio::awaitable<WorkerStats> Worker::run() {
    return impl_->run();
}

void Worker::shutdown() {
    impl_->shutdown();
}

}  // namespace conveyor::worker
