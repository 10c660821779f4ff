#include "conveyor/worker/worker.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/host_name.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <map>
#include <numeric>

#include "admit.hpp"
#include "capacity.hpp"
#include "concurrency.hpp"
#include "conveyor/core/amqp.hpp"
#include "conveyor/core/circuit_breaker.hpp"
#include "conveyor/core/config.hpp"
#include "conveyor/core/http_server.hpp"
#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/logging.hpp"
#include "conveyor/core/metrics.hpp"
#include "conveyor/core/redaction.hpp"
#include "conveyor/core/task_group.hpp"
#include "conveyor/core/topology.hpp"
#include "execute.hpp"
#include "flow_limits.hpp"
#include "heartbeat.hpp"
#include "housekeeping.hpp"
#include "quarantine.hpp"
#include "ready_jobs.hpp"
#include "settle.hpp"
#include "worker_metrics.hpp"

namespace conveyor::worker {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

namespace {

// After the grace period the remaining jobs are cancelled; this bounds how long they get to unwind.
constexpr auto kCancelledJobsUnwind = std::chrono::seconds(5);
// How often conveyor_workers_needed is recomputed: a few times per Prometheus scrape or KEDA poll (15 s).
constexpr auto kCapacityInterval = std::chrono::seconds(5);
// How soon the capacity estimate tries again while the monitor connection is down.
constexpr auto kCapacityRetry = std::chrono::milliseconds(250);
// Connect, handshake and query timeout of the capacity estimate's connection.
constexpr auto kMonitorTimeout = std::chrono::milliseconds(2000);
// Threads for calls that block: stopping a connection joins its thread.
constexpr int kBlockingThreads = 2;
// At shutdown, how long the job history may take to write what it still holds.
constexpr auto kHistoryFinalFlush = std::chrono::seconds(5);
// At shutdown, how long the broker gets to confirm the parking of jobs taken but not started (else requeued).
constexpr auto kHandBackTimeout = std::chrono::seconds(2);
// Commands on the control exchange unacknowledged at once; they are few and small.
constexpr std::uint16_t kControlPrefetch = 50;
// How often the worker looks for a newer version of the flow limits: an applied file is in force fleet-wide
// within this (and a statement), without a restart.
constexpr auto kFlowPoll = std::chrono::seconds(2);

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

/// The job queues, and this worker's queue on the control exchange.
amqp::Topology consumer_topology(std::span<const std::string> families, const amqp::QueueSpec& control_queue) {
    auto declared = topology::job_topology(families);
    declared.queues.push_back(control_queue);
    declared.bindings.push_back({control_queue.name, std::string(topology::kControlExchange), ""});
    return declared;
}

std::unique_ptr<otlp::Exporter> span_exporter(const asio::any_io_executor& executor, const WorkerSettings& settings,
                                              prometheus::Registry& metrics) {
    if (settings.otlp.endpoint.empty()) {
        return nullptr;
    }
    spdlog::info("exporting spans to {} over OTLP/HTTP", redacted_url(settings.otlp.endpoint));
    return std::make_unique<otlp::Exporter>(executor, settings.otlp, "conveyor-worker", settings.name, metrics);
}

std::map<std::string, RetryPolicy, std::less<>> retry_policies(const WorkerSettings& settings,
                                                               const JobRegistry& registry) {
    std::map<std::string, RetryPolicy, std::less<>> policies;
    for (const auto& type : registry.types()) {
        policies.emplace(type, effective_retry_policy(settings, *registry.find(type)));
    }
    return policies;
}

workers::Identity identity(const WorkerSettings& settings) {
    return {settings.name,     CONVEYOR_VERSION,     asio::ip::host_name(),      static_cast<int>(::getpid()),
            settings.families, settings.concurrency, settings.heartbeat_interval};
}

}  // namespace

/// A delivery goes through three stages on one of the pool's coroutines: admit (may it run now?), execute (the
/// handler under its deadline) and settle (ack, retry or dead-letter). Shutdown is cancellation: the slots and the
/// background tasks are task groups, drained, cancelled and joined in turn.
class Worker::Impl {
  public:
    Impl(asio::io_context& io, WorkerSettings settings, const JobRegistry& registry,
         std::shared_ptr<prometheus::Registry> prometheus)
        : io_(io),
          settings_(std::move(settings)),
          registry_(registry),
          prometheus_(std::move(prometheus)),
          metrics_(*prometheus_, settings_.families, registry_),
          control_queue_(topology::control_queue(settings_.name)),
          prefetch_shares_(prefetch_shares(settings_)),
          batches_(io_, deliveries_at_once()),
          ready_(BandPreference(settings_.priority_weights)),
          shutdown_requests_(io_, 1),
          consumer_(connection_settings(settings_, "consumer", &metrics_.consumer_observer),
                    consumer_topology(settings_.families, control_queue_)),
          publisher_(connection_settings(settings_, "publisher", &metrics_.publisher_observer), {}),
          monitor_(monitor_settings(settings_), {}),
          http_(io_.get_executor(), settings_.http_address, settings_.http_port),
          pool_(io_.get_executor(), database_settings(settings_)),
          quarantine_(pool_, settings_.quarantine_after),
          outbox_(pool_, publisher_),
          history_(pool_,
                   {.enabled = settings_.history,
                    .max_buffered = settings_.history_buffer,
                    .retention = settings_.history_retention,
                    .worker = settings_.name},
                   {metrics_.history_written(), metrics_.history_dropped(), metrics_.history_buffered()}),
          admitter_(registry_, {{.max_body_bytes = settings_.max_message_bytes}, settings_.quarantine_after},
                    quarantine_, database_, control_, unique_keys_, concurrency_, rates_, source_, draining_),
          group_commit_(
              pool_,
              {.max_members = settings_.group_commit_max,
               .lanes = settings_.group_commit_lanes,
               .open_groups = settings_.group_commit_open,
               .wait = settings_.group_commit_wait},
              {&metrics_.group_commit_jobs(), &metrics_.group_commit_failed(), &metrics_.group_commit_taken_out()}),
          execution_(pool_, settings_.group_commit ? &group_commit_ : nullptr, quarantine_, database_, metrics_,
                     history_, control_, {settings_.job_timeout, settings_.name, spans_.get()}, aborting_),
          settlement_(source_, publisher_, outbox_, history_, unique_keys_, batch_members_, settings_.name,
                      retry_policies(settings_, registry_), registry_, spans_.get()),
          heartbeat_(pool_, identity(settings_), [this] { return load(); }) {}

    /// What the broker may have handed this worker and not had acknowledged: the sum of the queues' prefetch.
    [[nodiscard]] std::size_t deliveries_at_once() const {
        return topology::kBands.size() *
               std::accumulate(prefetch_shares_.begin(), prefetch_shares_.end(), std::size_t{0});
    }

    asio::awaitable<WorkerStats> run() {
        serve_http();
        co_await load_pauses();
        co_await load_flow_limits();
        for (std::size_t index = 0; index < settings_.families.size(); ++index) {
            for (const auto band : topology::kBands) {
                consumer_.add_consumer({topology::queue_name(settings_.families[index], band), prefetch_shares_[index]},
                                       batches_);
            }
        }
        consumer_.add_consumer({control_queue_.name, kControlPrefetch}, control_deliveries_);
        consumer_.start();
        publisher_.start();
        monitor_.start();
        start_background_tasks();
        start_slots();
        spdlog::info(
            "worker {} started: queues {}, concurrency {} ({} reserved for high priority), priority weights {}, "
            "prefetch {} per priority band ({} per family), {} threads, job timeout {} ms, group commit {}",
            settings_.name, fmt::join(settings_.families, ","), settings_.concurrency, settings_.high_priority_reserved,
            fmt::join(settings_.priority_weights, ":"), deliveries_at_once() / topology::kBands.size(),
            fmt::join(prefetch_shares_, "/"), settings_.threads, settings_.job_timeout.count(),
            settings_.group_commit
                ? fmt::format("on ({} jobs at most, {} lanes, wait {} us)", settings_.group_commit_max,
                              settings_.group_commit_lanes, settings_.group_commit_wait.count())
                : std::string("off"));

        co_await shutdown_requests_.async_receive(asio::as_tuple(asio::use_awaitable));
        co_await drain();
        // A place kept for a key's next job would otherwise hold the key back for the rest of its lease.
        co_await concurrency_.release_all();
        // Nothing publishes after the drain but an outbox sweep, which must not wait for a broker that is gone.
        co_await asio::co_spawn(blocking_, amqp::stop_connection(publisher_), asio::use_awaitable);
        // The background tasks end within a statement (bounded by the statement timeout); a sweep's publish fails
        // at once on the stopped publisher.
        background_.cancel();
        co_await background_.join(Clock::time_point::max());
        co_await closing_.join(Clock::time_point::max());
        co_await heartbeat_.stop();
        http_.stop();
        const auto& counts = settlement_.counts();
        spdlog::info(
            "worker {} stopped: {} succeeded, {} retried, {} dead-lettered, {} duplicates, {} deduplicated, {} "
            "requeued, {} cancelled, {} parked while paused, {} put in line by a concurrency limit, {} by a rate "
            "limit, {} handed back unstarted",
            settings_.name, counts.succeeded.load(), counts.retried.load(), counts.dead_lettered.load(),
            counts.duplicates.load(), counts.deduplicated.load(), counts.requeued.load(), counts.cancelled.load(),
            counts.parked.load(), counts.waiting.load(), counts.waiting_for_token.load(),
            counts.parked_at_shutdown.load());
        co_return WorkerStats{counts.succeeded, counts.retried, counts.dead_lettered, counts.requeued};
    }

    void shutdown() { shutdown_requests_.try_send(error_code{}); }

  private:
    /// Before consuming, so that a pause on record holds from the first delivery. Without the database the worker
    /// starts anyway (jobs that need no database still run) and follows the records once it is back.
    asio::awaitable<void> load_pauses() {
        std::string failure;
        try {
            co_await control_.load_pauses();
        } catch (const pg::Error& e) {
            failure = e.what();
        }
        if (!failure.empty()) {
            spdlog::warn("cannot read the paused queues ({}); starting without them, they are read again every 2 s",
                         failure);
        }
    }

    /// Before consuming, so that the limits on record hold from the first delivery. Without the database the worker
    /// starts anyway: a limited job cannot be admitted before the database is back, and the limits are read again
    /// every few seconds.
    asio::awaitable<void> load_flow_limits() {
        std::string failure;
        try {
            co_await flow_.load();
        } catch (const pg::Error& e) {
            failure = e.what();
        }
        if (!failure.empty()) {
            spdlog::warn("cannot read the flow limits ({}); they are read again every {} s", failure,
                         kFlowPoll.count());
        }
    }

    void on_flow_change(std::int64_t version) {
        metrics_.flow_version().Set(static_cast<double>(version));
        const auto config = flow_.current();
        std::vector<std::string> limits;
        for (const auto& [type, settings] : config->jobs) {
            if (settings.concurrency) {
                limits.push_back(fmt::format("{} {} at once per {}", type, settings.concurrency->limit,
                                             settings.concurrency->key_pointer));
            }
            if (settings.rate) {
                const auto& rate = *settings.rate;
                limits.push_back(fmt::format("{} {}/s (burst {}){}", type, rate.per_second, rate.burst,
                                             rate.key_pointer.empty() ? "" : fmt::format(" per {}", rate.key_pointer)));
            }
        }
        spdlog::info("flow limits version {} in force: {}", version,
                     limits.empty() ? std::string("no limits") : fmt::format("{}", fmt::join(limits, "; ")));
    }

    /// A family paused as a whole is not consumed at all; a paused type is parked by admission.
    void on_pause_change(const std::string& family, bool whole_family, std::size_t types) {
        if (std::find(settings_.families.begin(), settings_.families.end(), family) == settings_.families.end()) {
            return;
        }
        for (const auto band : topology::kBands) {
            consumer_.pause_consumer(topology::queue_name(family, band), whole_family);
        }
        const auto queue = topology::queue_name(family);
        metrics_.queue_paused(queue).Set(whole_family ? 1 : 0);
        metrics_.types_paused(queue).Set(static_cast<double>(types));
    }

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

    void start_background_tasks() {
        dispatching_.spawn("delivery dispatcher", [this](TaskGroup::Task&) { return dispatch(); });
        HousekeepingSettings chores;
        chores.outbox_sweep_interval = settings_.outbox_sweep_interval;
        chores.inbox_retention = settings_.inbox_retention;
        background_.spawn("housekeeping", [this, chores](TaskGroup::Task&) {
            return run_housekeeping(pool_, outbox_, chores, database_);
        });
        background_.spawn("outbox cleanup",
                          [this](TaskGroup::Task&) { return run_outbox_cleanup(outbox_, database_); });
        background_.spawn("database probe", [this, chores](TaskGroup::Task&) {
            return run_database_probe(pool_, chores.probe_interval, metrics_.outbox_pending(), database_);
        });
        background_.spawn("capacity estimate", [this](TaskGroup::Task&) { return estimate_capacity(); });
        background_.spawn("job history", [this](TaskGroup::Task&) { return history_.run(kHistoryFinalFlush); });
        background_.spawn("batch members", [this](TaskGroup::Task&) { return batch_members_.run(); });
        background_.spawn("control listener",
                          [this](TaskGroup::Task&) { return control_.listen(control_deliveries_, consumer_); });
        background_.spawn("cancellations", [this](TaskGroup::Task&) { return control_.follow_records(); });
        background_.spawn("flow limits", [this](TaskGroup::Task&) { return flow_.follow(); });
        background_.spawn("concurrency limits", [this](TaskGroup::Task&) { return concurrency_.run(); });
        background_.spawn("rate limits", [this](TaskGroup::Task&) { return rates_.run(); });
        background_.spawn("heartbeat", [this](TaskGroup::Task&) { return heartbeat_.run(database_); });
        if (spans_) {
            background_.spawn("span export", [this](TaskGroup::Task&) { return spans_->run(); });
        }
        if (settings_.group_commit) {
            background_.spawn("group commit", [this](TaskGroup::Task&) { return group_commit_.serve(); });
        }
    }

    /// The pool: each coroutine runs on a strand of its own beside its job's watchdog, and the task's signal
    /// cancels whatever it awaits: the running job, at its deadline or when the shutdown's grace period is over.
    /// The first few take only high-priority jobs.
    void start_slots() {
        job_slots_.reserve(settings_.concurrency);
        for (unsigned i = 0; i < settings_.concurrency; ++i) {
            const auto takes =
                i < settings_.high_priority_reserved ? ReadyJobs::Takes::high_band_only : ReadyJobs::Takes::any_band;
            auto& task = slots_.spawn("worker coroutine", [this, takes](TaskGroup::Task& slot_task) {
                return serve_jobs(*job_slots_.emplace_back(std::make_unique<JobSlot>(slot_task)), takes);
            });
            slots_.spawn_on(task.strand(), "job watchdog",
                            [this, i](TaskGroup::Task&) { return watch(*job_slots_[i], settings_.job_timeout); });
        }
    }

    asio::awaitable<void> drain() {
        const auto grace_deadline = Clock::now() + settings_.shutdown_grace;
        draining_ = true;
        admitter_.stop_waiting();
        // Closing a connection to a stalled broker takes its timeouts: the monitor's closes alongside the drain.
        closing_.spawn("closing the monitor connection",
                       [this](TaskGroup::Task&) { return amqp::stop_connection(monitor_); });
        spdlog::info("shutdown: cancelling consumers; jobs in flight get {} ms", settings_.shutdown_grace.count());
        co_await cancel_consumers(grace_deadline);
        // Deliveries that arrived before the cancel was confirmed but have not started are handed back; closing
        // the batch channel makes the dispatcher hand back the rest and close the ready jobs, which ends the slots.
        std::vector<amqp::Delivery> not_started;
        while (batches_.try_receive([&not_started](error_code, amqp::DeliveryBatch batch) {
            std::move(batch.begin(), batch.end(), std::back_inserter(not_started));
        })) {
        }
        batches_.close();
        co_await settlement_.hand_back(std::move(not_started), metrics_, kHandBackTimeout);
        const bool finished_in_grace = co_await slots_.join(grace_deadline);
        if (!finished_in_grace) {
            co_await abort_running_jobs();
        }
        co_await finish_dispatching();
    }

    asio::awaitable<void> abort_running_jobs() {
        spdlog::warn("shutdown: grace period over with jobs still running; cancelling them for requeue");
        aborting_ = true;
        slots_.cancel();
        const auto unwind_deadline = Clock::now() + kCancelledJobsUnwind;
        const bool unwound = co_await slots_.join(unwind_deadline);
        if (!unwound) {
            spdlog::error("shutdown: jobs did not unwind; closing the connection requeues them");
        }
    }

    /// The dispatcher hands back what it held once the batch channel closed, and the publisher must outlive the
    /// parking's confirms. It started before the slots ended, so its hand-back's own timeout bounds the wait; only
    /// a dispatcher left waiting for slots that were aborted is cancelled (the connection's close requeues).
    asio::awaitable<void> finish_dispatching() {
        const auto deadline = Clock::now() + kHandBackTimeout;
        const bool finished = co_await dispatching_.join(deadline);
        if (!finished) {
            dispatching_.cancel();
            const auto no_deadline = Clock::time_point::max();
            co_await dispatching_.join(no_deadline);
        }
    }

    /// The broker confirms the cancel within a round trip; a stalled one must not eat the grace period, so the
    /// wait for it is bounded by the grace deadline (the connection's close requeues whatever follows).
    asio::awaitable<void> cancel_consumers(Clock::time_point deadline) {
        auto cancelled = std::make_shared<asio::experimental::concurrent_channel<void(error_code)>>(io_, 1);
        consumer_.async_cancel_consumers([cancelled](error_code) { cancelled->try_send(error_code{}); });
        asio::steady_timer cancel_deadline(co_await asio::this_coro::executor, deadline);
        const auto confirmed = co_await (cancelled->async_receive(asio::as_tuple(asio::use_awaitable)) ||
                                         cancel_deadline.async_wait(asio::as_tuple(asio::use_awaitable)));
        if (confirmed.index() == 1) {
            spdlog::warn("shutdown: the broker did not confirm the consumer cancel within the grace period");
        }
    }

    /// Sets conveyor_workers_needed every kCapacityInterval from the broker's counts of the queues this worker
    /// consumes (asked on the monitor connection) and its own job rates and durations (see CapacityEstimator).
    /// Without the broker it keeps the last value: a scale-in decision on no data would be a guess.
    asio::awaitable<void> estimate_capacity() {
        CapacityEstimator estimator(
            {.duration_bounds = WorkerMetrics::duration_bounds(), .concurrency = settings_.concurrency});
        std::string last_failure;
        auto next = Clock::now();
        while (true) {
            const bool waited = co_await wait_until(next);
            if (!waited) {
                co_return;
            }
            if (!monitor_.connected() || draining_) {
                next = Clock::now() + kCapacityRetry;
                continue;
            }
            next = Clock::now() + kCapacityInterval;
            std::map<std::string, QueueObservation> queues;
            const auto failure = co_await observe_queues(queues);
            if (!failure.empty() && failure != last_failure && !draining_) {
                spdlog::warn("capacity estimate: cannot count {}; conveyor_workers_needed keeps its value", failure);
            }
            last_failure = failure;
            const auto needed =
                failure.empty() ? estimator.observe(Clock::now(), queues) : std::optional<std::uint32_t>();
            if (needed) {
                metrics_.workers_needed().Set(static_cast<double>(*needed));
                estimated_ = true;
                for (const auto& [queue, estimate] : estimator.estimates()) {
                    spdlog::debug("capacity: {} arrivals {:.1f}/s, p95 {:.3f} s, {:.1f} slots", queue,
                                  estimate.arrivals_per_second, estimate.p95_seconds, estimate.slots);
                }
            }
        }
    }

    /// Counts each consumed family on the monitor connection (the messages of all its bands; the consumers of
    /// its normal band, one per worker), beside this worker's own totals. Returns the failure (which queue, why),
    /// or empty.
    asio::awaitable<std::string> observe_queues(std::map<std::string, QueueObservation>& queues) {
        for (const auto& family : settings_.families) {
            std::uint32_t messages = 0;
            std::uint32_t consumers = 0;
            for (const auto band : topology::kBands) {
                const auto band_queue = topology::queue_name(family, band);
                auto counting = monitor_.async_queue_counts(band_queue, asio::as_tuple(asio::use_awaitable));
                auto [error, counts] = co_await std::move(counting);
                if (error) {
                    co_return fmt::format("{}: {}", band_queue, error.message());
                }
                messages += counts.messages;
                consumers = band == topology::Band::normal ? counts.consumers : consumers;
            }
            const auto queue = topology::queue_name(family);
            auto totals = metrics_.totals(queue);
            queues.emplace(queue,
                           QueueObservation{messages, consumers, totals.settled, metrics_.in_flight(queue).Value(),
                                            std::move(totals.duration_counts)});
        }
        co_return std::string();
    }

    /// What the heartbeat reports: jobs running now, the totals since start, the circuit breakers' states, the
    /// estimate of the workers needed.
    [[nodiscard]] workers::Load load() {
        double in_flight = 0;
        for (const auto& family : settings_.families) {
            in_flight += metrics_.in_flight(topology::queue_name(family)).Value();
        }
        const auto& counts = settlement_.counts();
        return {
            static_cast<std::int64_t>(in_flight),
            static_cast<std::int64_t>(counts.succeeded.load()),
            static_cast<std::int64_t>(counts.retried.load()),
            static_cast<std::int64_t>(counts.dead_lettered.load()),
            CircuitBreaker::states(*prometheus_),
            estimated_ ? std::optional(static_cast<std::int64_t>(metrics_.workers_needed().Value())) : std::nullopt};
    }

    /// Lines up each batch from the connection thread for the slots. Running on the worker's own threads, it
    /// wakes slots without system calls; only the batch itself crossed threads.
    asio::awaitable<void> dispatch() {
        while (true) {
            auto [error, batch] = co_await batches_.async_receive(asio::as_tuple(asio::use_awaitable));
            if (error) {
                break;  // closed at shutdown
            }
            ready_.push(std::move(batch));
        }
        auto not_started = ready_.close();
        co_await settlement_.hand_back(std::move(not_started), metrics_, kHandBackTimeout);
    }

    asio::awaitable<void> serve_jobs(JobSlot& slot, ReadyJobs::Takes takes) {
        try {
            co_await take_jobs(slot, takes);
        } catch (...) {
            slot.close();
            throw;
        }
        slot.close();
    }

    asio::awaitable<void> take_jobs(JobSlot& slot, ReadyJobs::Takes takes) {
        simdjson::dom::parser parser;
        ReadyJobs::Taker taker(co_await asio::this_coro::executor, takes);
        while (true) {
            // A cancellation is meant for the job it interrupted (or one that ended as it fired); it must not
            // fail the waits that follow.
            co_await asio::this_coro::reset_cancellation_state();
            auto [error, delivery] = co_await ready_.take(taker);
            if (error == asio::error::operation_aborted && !aborting_) {
                continue;
            }
            if (error) {
                co_return;  // closed at shutdown
            }
            if (!source_.is_current(delivery)) {
                continue;  // its connection dropped, so the broker has requeued it already
            }
            if (draining_) {
                co_await hand_back(std::move(delivery));
                continue;
            }
            co_await handle(delivery, parser, slot);
        }
    }

    /// Admit, execute, settle.
    asio::awaitable<void> handle(const amqp::Delivery& delivery, simdjson::dom::parser& parser, JobSlot& slot) {
        // The delivery's span: the job's run, or its dead-lettering if it cannot run.
        const auto trace =
            TraceContext::start_span(amqp::find_text_header(delivery.message.properties.headers, "traceparent"));
        auto admission = co_await admitter_.admit(delivery, parser, trace);
        if (auto* refusal = std::get_if<Refusal>(&admission)) {
            co_await refuse(delivery, std::move(*refusal), trace);
            co_return;
        }
        if (std::holds_alternative<admission::HandBack>(admission)) {
            co_await hand_back(delivery);  // the worker is draining
            co_return;
        }
        if (std::holds_alternative<admission::Gone>(admission)) {
            co_return;
        }
        if (auto* cancelled = std::get_if<admission::Cancelled>(&admission)) {
            co_await settle_unrun(delivery, cancelled->envelope, trace);
            co_return;
        }
        if (auto* duplicate = std::get_if<admission::Deduplicated>(&admission)) {
            const auto log = job_logger(duplicate->envelope, delivery, trace);
            auto& metrics = metrics_.job(delivery.queue, duplicate->envelope.type);
            co_await settlement_.discard_duplicate(delivery, duplicate->envelope, metrics, log, trace);
            co_return;
        }
        if (auto* paused = std::get_if<admission::Paused>(&admission)) {
            const auto log = job_logger(paused->envelope, delivery, trace);
            auto& metrics = metrics_.job(delivery.queue, paused->envelope.type);
            co_await settlement_.park(delivery, paused->envelope, metrics, settings_.paused_recheck, log);
            co_return;
        }
        if (auto* over_limit = std::get_if<admission::OverLimit>(&admission)) {
            co_await wait_in_line(delivery, *over_limit, trace);
            co_return;
        }
        co_await run_admitted(delivery, std::get<AdmittedJob>(admission), slot, trace);
    }

    asio::awaitable<void> run_admitted(const amqp::Delivery& delivery, AdmittedJob& job, JobSlot& slot,
                                       const TraceContext& trace) {
        const auto& envelope = job.envelope;
        const auto log = job_logger(envelope, delivery, trace);
        const ConcurrencyLimits::PlaceHeld place(concurrency_, std::move(job.place), envelope.job_id);
        auto attempt = co_await execution_.run(delivery, job, slot, trace, log);
        if (!attempt) {
            settlement_.requeue(delivery);  // interrupted by the shutdown
            co_return;
        }
        auto& metrics = metrics_.job(delivery.queue, envelope.type);
        co_await settlement_.settle(delivery, envelope, metrics, std::move(*attempt), log, trace);
    }

    /// Jobs a key's waiting line handed to this worker, as a job of the key ended here: they start like deliveries.
    /// A worker that is draining takes no more: they go back to their line.
    void take_from_line(amqp::DeliveryBatch jobs) {
        if (draining_) {
            for (const auto& job : jobs) {
                source_.reject(job, true);
            }
            return;
        }
        ready_.push(std::move(jobs));
    }

    /// Over its key's concurrency limit or without a token: into the limit's waiting line, then acknowledged. If the
    /// worker drains while the database is away, the job goes back to the broker instead.
    asio::awaitable<void> wait_in_line(const amqp::Delivery& delivery, const admission::OverLimit& over_limit,
                                       const TraceContext& trace) {
        const auto log = job_logger(over_limit.envelope, delivery, trace);
        const auto* place = std::get_if<ConcurrencyPlace>(&over_limit.limit);
        if (place != nullptr && delivery.stored_id) {
            // Taken from its line, but its promised place ran out before it got here: back to its turn in line.
            source_.reject(delivery, true);
            co_return;
        }
        bool stored = false;
        if (place != nullptr) {
            stored = co_await concurrency_.wait_in_line(*place, delivery, log);
        } else {
            stored = co_await rates_.wait_in_line(std::get<RateBucket>(over_limit.limit), delivery, log);
        }
        if (!stored) {
            co_await hand_back(delivery);
            co_return;
        }
        auto& metrics = metrics_.job(delivery.queue, over_limit.envelope.type);
        settlement_.acknowledge_waiting(delivery, over_limit.envelope,
                                        place != nullptr ? FlowLimit::concurrency : FlowLimit::rate, metrics, log);
    }

    asio::awaitable<void> hand_back(amqp::Delivery delivery) {
        std::vector<amqp::Delivery> one;
        one.push_back(std::move(delivery));
        co_await settlement_.hand_back(std::move(one), metrics_, kHandBackTimeout);
    }

    /// A job cancelled before it ran: acknowledged, and on record as cancelled.
    asio::awaitable<void> settle_unrun(const amqp::Delivery& delivery, const Envelope& envelope,
                                       const TraceContext& trace) {
        Attempt attempt;
        attempt.outcome = Retry{{}, "cancelled before it ran"};
        attempt.cancelled = true;
        attempt.started_at = std::chrono::system_clock::now();
        const auto log = job_logger(envelope, delivery, trace);
        auto& metrics = metrics_.job(delivery.queue, envelope.type);
        co_await settlement_.settle(delivery, envelope, metrics, std::move(attempt), log, trace);
    }

    asio::awaitable<void> refuse(const amqp::Delivery& delivery, Refusal refusal, const TraceContext& trace) {
        auto& metrics = metrics_.job(delivery.queue, refusal.type);
        const auto& job_id = delivery.message.properties.message_id;
        const JobLogger log({.job_id = job_id,
                             .type = refusal.type,
                             .correlation_id = delivery.message.properties.correlation_id,
                             .queue = delivery.queue,
                             .attempt = refusal.attempts,
                             .trace = &trace});
        if (history_.enabled() && !job_id.empty()) {
            history_.record(refusal_event(delivery, refusal.type, refusal.attempts, trace, settings_.name,
                                          fmt::format("{}: {}", refusal.verdict.reason, refusal.verdict.error)));
        }
        // A member that cannot run has ended, dead-lettered (a batch header that is itself malformed names none).
        const auto batch = amqp::find_text_header(delivery.message.properties.headers, job_headers::kBatch);
        if (!job_id.empty() && job_headers::is_batch_id(batch)) {
            co_await batch_members_.ended(std::string(batch), job_id, "dead_lettered", log);
        }
        const bool confirmed =
            co_await settlement_.dead_letter(delivery, metrics, refusal.attempts, std::move(refusal.verdict), trace);
        // A quarantined job's record is the evidence: it is cleared only once the job is in its dead-letter queue.
        if (confirmed && refusal.clear_record) {
            co_await execution_.forget_start(job_id, log);
        }
    }

    asio::io_context& io_;
    WorkerSettings settings_;
    const JobRegistry& registry_;
    std::shared_ptr<prometheus::Registry> prometheus_;
    WorkerMetrics metrics_;
    /// This worker's queue on the control exchange.
    amqp::QueueSpec control_queue_;
    std::vector<std::uint16_t> prefetch_shares_;
    amqp::DeliveryChannel batches_;
    ReadyJobs ready_;
    asio::experimental::concurrent_channel<void(error_code)> shutdown_requests_;
    amqp::Connection consumer_;
    amqp::Connection publisher_;
    amqp::Connection monitor_;
    HttpServer http_;
    pg::Pool pool_;
    Quarantine quarantine_;
    OutboxRelay outbox_;
    HistoryRecorder history_;
    JobControl control_{pool_, settings_.history_retention,
                        [this](const std::string& family, bool whole_family, std::size_t types) {
                            on_pause_change(family, whole_family, types);
                        }};
    amqp::DeliveryChannel control_deliveries_{io_, kControlPrefetch};
    DatabaseHealth database_;
    std::atomic<bool> draining_{false};
    std::atomic<bool> aborting_{false};
    UniqueKeys unique_keys_{pool_, database_, draining_};
    BatchMembers batch_members_{pool_, database_, draining_};
    FlowLimits flow_{pool_, kFlowPoll, [this](std::int64_t version) { on_flow_change(version); }};
    ConcurrencyLimits concurrency_{
        pool_,
        publisher_,
        database_,
        flow_,
        draining_,
        {.holder = control_queue_.name.substr(topology::kControlExchange.size() + 1),
         .pool = {.max_waiters = std::max<std::size_t>(1, settings_.concurrency / 4)}},
        {metrics_.flow_waiting_jobs("concurrency"), metrics_.flow_waiting_keys("concurrency")},
        [this](amqp::DeliveryBatch jobs) { take_from_line(std::move(jobs)); }};
    JobSource source_{consumer_, concurrency_};
    RateLimits rates_{
        pool_,
        publisher_,
        database_,
        flow_,
        draining_,
        {},
        {metrics_.flow_waiting_jobs("rate"), metrics_.flow_waiting_keys("rate"), metrics_.flow_rate_tokens()}};
    /// Null unless spans are exported (CONVEYOR_OTLP_ENDPOINT).
    std::unique_ptr<otlp::Exporter> spans_ = span_exporter(io_.get_executor(), settings_, *prometheus_);
    Admitter admitter_;
    GroupCommit group_commit_;
    Execution execution_;
    Settlement settlement_;
    Heartbeat heartbeat_;
    /// conveyor_workers_needed holds an estimate (not its initial 0).
    std::atomic<bool> estimated_ = false;
    std::vector<std::unique_ptr<JobSlot>> job_slots_;
    TaskGroup slots_{io_.get_executor()};
    TaskGroup dispatching_{io_.get_executor()};  ///< joined by the drain, before the publisher stops
    TaskGroup background_{io_.get_executor()};
    /// After the connections: its threads are joined, and whatever they still run ends, before those go.
    asio::thread_pool blocking_{kBlockingThreads};
    TaskGroup closing_{blocking_.get_executor()};
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
