#include "conveyor/scheduler/scheduler.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <map>

#include "api.hpp"
#include "archiver.hpp"
#include "console_pages.hpp"
#include "console_sessions.hpp"
#include "conveyor/admin/workers.hpp"
#include "conveyor/core/amqp.hpp"
#include "conveyor/core/http_server.hpp"
#include "conveyor/core/metrics.hpp"
#include "conveyor/core/pg.hpp"
#include "conveyor/core/redaction.hpp"
#include "conveyor/core/task_group.hpp"
#include "conveyor/core/topology.hpp"
#include "firing.hpp"
#include "relay.hpp"
#include "scheduler_metrics.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

// Dead letters held by the archiver while it stores them, per DLQ.
constexpr std::uint16_t kArchiverPrefetch = 200;
constexpr auto kProbeInterval = std::chrono::seconds(1);
constexpr auto kCountInterval = std::chrono::seconds(5);
constexpr auto kPruneInterval = std::chrono::minutes(1);
// How long the overview waits for Prometheus's alerts before showing it without them.
constexpr auto kPrometheusTimeout = std::chrono::milliseconds(2000);
// Connect, handshake and query timeout of the connection that counts queue depths.
constexpr auto kMonitorTimeout = std::chrono::milliseconds(2000);
// How long a worker stopped or gone stays on record (in the console and GET /v1/workers).
constexpr auto kDepartedWorkersKept = std::chrono::hours(24);
constexpr int kPruneBatch = 10'000;
constexpr std::string_view kReadsRole = "reads";

pg::Settings database_settings(const SchedulerSettings& settings, std::size_t pool_size, std::string_view role) {
    pg::Settings database;
    database.url = role == kReadsRole ? settings.pg_read_url : settings.pg_url;
    database.pool_size = pool_size;
    database.statement_timeout = settings.pg_statement_timeout;
    database.application_name = fmt::format("conveyor-scheduler {} {}", settings.name, role);
    return database;
}

amqp::ConnectionSettings connection_settings(const SchedulerSettings& settings, std::string_view role,
                                             amqp::ConnectionObserver* observer) {
    amqp::ConnectionSettings connection;
    connection.url = amqp::Url::parse(settings.amqp_url);
    connection.name = fmt::format("conveyor-scheduler {} {}", settings.name, role);
    connection.tls_ca_file = settings.amqp_ca_file;
    connection.heartbeat = settings.amqp_heartbeat;
    connection.observer = observer;
    return connection;
}

/// The console's and the API's queue depths: a connection of their own with a short timeout, since each count
/// blocks its thread until the broker answers.
amqp::ConnectionSettings monitor_settings(const SchedulerSettings& settings) {
    auto connection = connection_settings(settings, "monitor", nullptr);
    connection.connect_timeout = kMonitorTimeout;
    return connection;
}

/// Sets one gauge per key of `current`. A key set before and missing now (a combination with no rows left, a
/// schedule no longer active) reads 0, not its last value; `shown` keeps every key set so far.
template <typename Key, typename SetGauge>
void set_gauges(std::map<Key, double>& shown, std::map<Key, double> current, const SetGauge& set_gauge) {
    for (const auto& entry : shown) {
        current.try_emplace(entry.first, 0.0);
    }
    for (const auto& [key, value] : current) {
        set_gauge(key, value);
    }
    shown = std::move(current);
}

}  // namespace

class Scheduler::Impl {
  public:
    Impl(asio::io_context& io, SchedulerSettings settings, JobCatalogue catalogue, std::vector<Schedule> schedules,
         Authenticator authenticator, std::shared_ptr<prometheus::Registry> registry)
        : io_(io),
          settings_(std::move(settings)),
          catalogue_(std::move(catalogue)),
          registry_(std::move(registry)),
          metrics_(*registry_),
          shutdown_requests_(io_, 1),
          publisher_(connection_settings(settings_, "publisher", &metrics_),
                     topology::job_topology(topology::default_families())),
          monitor_(monitor_settings(settings_), {}),
          archiver_consumer_(connection_settings(settings_, "dead-letter archiver", nullptr),
                             topology::job_topology(topology::default_families())),
          dead_letters_(io_, topology::default_families().size() * kArchiverPrefetch),
          pool_(io_.get_executor(), database_settings(settings_, settings_.pg_pool_size, "pool")),
          read_pool_(settings_.pg_read_url.empty() || settings_.pg_read_url == settings_.pg_url
                         ? nullptr
                         : std::make_unique<pg::Pool>(
                               io_.get_executor(), database_settings(settings_, settings_.pg_pool_size, kReadsRole))),
          http_(io_.get_executor(), settings_.http_address, settings_.http_port),
          relay_(io_.get_executor(), pool_, database_settings(settings_, 1, "relay listener"), publisher_, metrics_,
                 RelaySettings{settings_.relay_batch, settings_.relay_poll_interval, settings_.publish_timeout}),
          firing_(io_.get_executor(), pool_, database_settings(settings_, 1, "leadership"), std::move(schedules),
                  metrics_),
          api_(pool_, read_pool_ ? *read_pool_ : pool_, {publisher_, monitor_, settings_.publish_timeout}, stopping_,
               catalogue_, std::move(authenticator), settings_.api_rate_limit, *registry_),
          archiver_(pool_, archiver_consumer_, dead_letters_) {
        if (!settings_.tls_cert_file.empty()) {
            http_.use_tls(settings_.tls_cert_file, settings_.tls_key_file);
            api_.use_secure_cookies();
        }
        if (!settings_.prometheus_url.empty()) {
            http::ClientSettings prometheus;
            prometheus.base_url = settings_.prometheus_url;
            prometheus.timeout = kPrometheusTimeout;
            prometheus_.emplace(io_.get_executor(), std::move(prometheus));
            api_.use_prometheus(*prometheus_);
        }
    }

    asio::awaitable<void> run() {
        for (const auto& family : topology::default_families()) {
            metrics_.oldest_dead_letter(family).Set(0);
        }
        serve_http();
        publisher_.start();
        monitor_.start();
        enqueueing_.spawn("enqueue batches", [this](TaskGroup::Task&) { return api_.write_enqueues(); });
        background_.spawn("relay", [this](TaskGroup::Task&) { return relay_.run(stopping_); });
        background_.spawn("schedule firing", [this](TaskGroup::Task&) { return firing_.run(stopping_); });
        background_.spawn("housekeeping", [this](TaskGroup::Task&) { return housekeeping(); });
        if (settings_.archive_dead_letters) {
            for (const auto& family : topology::default_families()) {
                archiver_consumer_.add_consumer({topology::dead_letter_queue_name(family), kArchiverPrefetch},
                                                dead_letters_);
            }
            archiver_consumer_.start();
            archiving_.spawn("dead-letter archiver", [this](TaskGroup::Task&) { return archiver_.run(); });
        }
        spdlog::info("scheduler {} started: HTTP on {}:{}, relay batch {}, poll every {} ms, retention {} s",
                     settings_.name, settings_.http_address, http_.port(), settings_.relay_batch,
                     settings_.relay_poll_interval.count(),
                     std::chrono::duration_cast<std::chrono::seconds>(settings_.retention).count());

        co_await shutdown_requests_.async_receive(asio::as_tuple(asio::use_awaitable));
        draining_ = true;
        stopping_ = true;
        // The archiver needs no grace: a batch not stored yet goes back to its queue, and storing is idempotent.
        archiving_.cancel();
        spdlog::info("shutdown: finishing the work in progress (at most {} ms)", settings_.shutdown_grace.count());
        const auto grace_deadline = Clock::now() + settings_.shutdown_grace;
        const bool finished_in_grace = co_await background_.join(grace_deadline);
        if (!finished_in_grace) {
            spdlog::warn(
                "shutdown: grace period over; publishes still waiting for the broker fail, and their rows "
                "stay pending for another replica");
        }
        // A stopped publisher fails the publishes that still wait, so the relay's batch ends; every coroutine that
        // holds a database connection must end before the pool goes away, and each is bounded by the statement
        // timeout.
        co_await asio::co_spawn(blocking_, amqp::stop_connection(publisher_), asio::use_awaitable);
        co_await asio::co_spawn(blocking_, amqp::stop_connection(archiver_consumer_), asio::use_awaitable);
        http_.stop();
        co_await asio::co_spawn(blocking_, amqp::stop_connection(monitor_), asio::use_awaitable);
        const auto no_deadline = Clock::time_point::max();
        co_await background_.join(no_deadline);
        co_await archiving_.join(no_deadline);
        co_await api_.requests_finished();
        enqueueing_.cancel();
        co_await enqueueing_.join(no_deadline);
        spdlog::info("scheduler {} stopped", settings_.name);
    }

    void shutdown() { shutdown_requests_.try_send(boost::system::error_code{}); }

    [[nodiscard]] std::uint16_t http_port() const noexcept { return http_.port(); }

  private:
    void serve_http() {
        http_.get("/healthz", [] { return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"}; });
        http_.get("/readyz", [this] {
            if (draining_) {
                return HttpResponse{503, "text/plain; charset=utf-8", "draining\n"};
            }
            if (!publisher_.connected()) {
                return HttpResponse{503, "text/plain; charset=utf-8",
                                    fmt::format("broker not connected: {}\n", publisher_.last_error())};
            }
            if (settings_.archive_dead_letters && !archiver_consumer_.consuming()) {
                return HttpResponse{
                    503, "text/plain; charset=utf-8",
                    fmt::format("not consuming the dead-letter queues: {}\n", archiver_consumer_.last_error())};
            }
            if (!database_ok_) {
                return HttpResponse{503, "text/plain; charset=utf-8",
                                    fmt::format("database {} not usable\n", redacted_url(settings_.pg_url))};
            }
            return HttpResponse{200, "text/plain; charset=utf-8", "ready\n"};
        });
        http_.get("/metrics", [this] {
            return HttpResponse{200, kPrometheusContentType, serialize_metrics(*registry_)};
        });
        api_.register_routes(http_);
        register_console_pages(http_);
        http_.set_limits({.max_connections = settings_.http_max_connections,
                          .max_body_bytes = settings_.api_max_body_bytes,
                          .client_rate = settings_.http_client_rate,
                          .trusted_proxies = settings_.http_trusted_proxies});
        http_.export_metrics(*registry_);
        http_.start();
    }

    /// Database probe for /readyz, the backlog gauges, and retention of finished rows.
    asio::awaitable<void> housekeeping() {
        asio::steady_timer tick(co_await asio::this_coro::executor);
        auto next_count = Clock::now();
        auto next_prune = Clock::now() + kPruneInterval;
        std::string last_failure;
        while (!stopping_) {
            std::string failure;
            try {
                co_await pool_.query("SELECT 1");
                if (Clock::now() >= next_count) {
                    next_count = Clock::now() + kCountInterval;
                    const auto counts = co_await pool_.query(
                        "SELECT count(*), count(*) FILTER (WHERE run_at < now() - interval '1 second') "
                        "FROM conveyor.scheduled_jobs WHERE state = 'pending'");
                    metrics_.pending.Set(static_cast<double>(counts.integer(0, 0)));
                    metrics_.overdue.Set(static_cast<double>(counts.integer(0, 1)));
                    co_await count_dead_letters();
                    co_await count_unfinished_batches();
                    co_await read_next_fires();
                }
                if (Clock::now() >= next_prune) {
                    next_prune = Clock::now() + kPruneInterval;
                    co_await prune();
                }
            } catch (const std::exception& e) {
                failure = e.what();
            }
            if (failure.empty() && !database_ok_) {
                spdlog::info("database {} usable", redacted_url(settings_.pg_url));
            } else if (!failure.empty() && failure != last_failure) {
                spdlog::error("database {}: {}", redacted_url(settings_.pg_url), failure);
            }
            database_ok_ = failure.empty();
            last_failure = failure;
            tick.expires_after(kProbeInterval);
            co_await tick.async_wait(asio::use_awaitable);
        }
    }

    /// The stored dead letters' gauges and the replay counter, from the database (replays happen in the CLI too).
    asio::awaitable<void> count_dead_letters() {
        const auto stored = co_await pool_.query(
            "SELECT family, reason, count(*), extract(epoch FROM now() - min(failed_at))::float8 "
            "FROM conveyor.dead_letters WHERE state = 'dead' GROUP BY family, reason");
        std::map<std::pair<std::string, std::string>, double> counts;
        std::map<std::string, double> oldest;
        for (const auto& family : topology::default_families()) {
            oldest[family] = 0;
        }
        for (int row = 0; row < stored.rows(); ++row) {
            const std::string family(stored.text(row, 0));
            counts[{family, std::string(stored.text(row, 1))}] = static_cast<double>(stored.integer(row, 2));
            oldest[family] = std::max(oldest[family], std::stod(std::string(stored.text(row, 3))));
        }
        set_gauges(dead_letter_counts_, std::move(counts), [this](const auto& labels, double count) {
            metrics_.dead_letters(labels.first, labels.second).Set(count);
        });
        for (const auto& [family, age] : oldest) {
            metrics_.oldest_dead_letter(family).Set(age);
        }

        // The counters are created here, with the database's totals, not at start-up: a series that began at 0
        // and then jumped to the total would show every past replay as one burst to rate().
        const auto replays = co_await pool_.query("SELECT queue, replayed FROM conveyor.dead_letter_replays");
        std::map<std::string, double> replayed;
        for (const auto& family : topology::default_families()) {
            replayed[topology::dead_letter_queue_name(family)] = 0;
        }
        for (int row = 0; row < replays.rows(); ++row) {
            replayed[std::string(replays.text(row, 0))] = static_cast<double>(replays.integer(row, 1));
        }
        for (const auto& [queue, total] : replayed) {
            auto& counter = metrics_.dlq_replayed(queue);
            if (total > counter.Value()) {
                counter.Increment(total - counter.Value());
            }
        }
    }

    /// The unfinished batches and the members they wait for; a sealed batch whose count stays flat has members
    /// that will never end (published to no queue, or an --expect above what was published).
    asio::awaitable<void> count_unfinished_batches() {
        const auto rows = co_await pool_.query(
            "SELECT count(*) FILTER (WHERE b.sealed_at IS NULL), count(*) FILTER (WHERE b.sealed_at IS NOT NULL), "
            "coalesce(sum(greatest(coalesce(b.expected, b.added) - ended.members, 0)), 0), "
            "coalesce(extract(epoch FROM now() - min(b.opened_at)), 0)::float8 "
            "FROM conveyor.batches b CROSS JOIN LATERAL "
            "(SELECT count(*) AS members FROM conveyor.batch_members m WHERE m.batch_id = b.id) ended "
            "WHERE b.finished_at IS NULL");
        metrics_.unfinished_batches("open").Set(static_cast<double>(rows.integer(0, 0)));
        metrics_.unfinished_batches("sealed").Set(static_cast<double>(rows.integer(0, 1)));
        metrics_.batch_members_unended.Set(static_cast<double>(rows.integer(0, 2)));
        metrics_.oldest_unfinished_batch.Set(std::stod(std::string(rows.text(0, 3))));
    }

    /// Each active schedule's next fire time, from the database: the leader advances it with every fire, so a
    /// time long past means no replica fires the schedule (no leader, or a leader that is stuck).
    asio::awaitable<void> read_next_fires() {
        const auto active = co_await pool_.query(
            "SELECT name, extract(epoch FROM next_fire_at)::float8 FROM conveyor.schedules "
            "WHERE active AND next_fire_at IS NOT NULL");
        std::map<std::string, double> next_fires;
        for (int row = 0; row < active.rows(); ++row) {
            next_fires[std::string(active.text(row, 0))] = std::stod(std::string(active.text(row, 1)));
        }
        set_gauges(next_fires_, std::move(next_fires),
                   [this](const std::string& schedule, double at) { metrics_.next_fire(schedule).Set(at); });
    }

    asio::awaitable<void> prune() {
        const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(settings_.retention).count();
        std::int64_t total = 0;
        while (!stopping_) {
            const auto deleted = co_await pool_.query(
                "DELETE FROM conveyor.scheduled_jobs WHERE id IN (SELECT id FROM conveyor.scheduled_jobs "
                "WHERE state <> 'pending' AND finished_at < now() - make_interval(secs => $1) LIMIT $2)",
                seconds, kPruneBatch);
            total += deleted.affected();
            if (deleted.affected() < kPruneBatch) {
                break;
            }
        }
        if (total > 0) {
            spdlog::info("retention: deleted {} finished scheduled jobs older than {} s", total, seconds);
        }
        co_await console_sessions::prune(pool_);
        const auto departed = co_await workers::prune(pool_, kDepartedWorkersKept);
        if (departed > 0) {
            spdlog::info("retention: forgot {} workers stopped or gone for a day", departed);
        }
    }

    asio::io_context& io_;
    SchedulerSettings settings_;
    JobCatalogue catalogue_;
    std::shared_ptr<prometheus::Registry> registry_;
    SchedulerMetrics metrics_;
    asio::experimental::concurrent_channel<void(boost::system::error_code)> shutdown_requests_;
    amqp::Connection publisher_;
    amqp::Connection monitor_;
    amqp::Connection archiver_consumer_;
    std::optional<http::Client> prometheus_;
    amqp::DeliveryChannel dead_letters_;
    pg::Pool pool_;
    std::unique_ptr<pg::Pool> read_pool_;  ///< when reads that may lag have a database of their own
    HttpServer http_;
    Relay relay_;
    ScheduleFiring firing_;
    EnqueueApi api_;
    DeadLetterArchiver archiver_;
    TaskGroup background_{io_.get_executor()};  ///< each ends at its next look at stopping_
    TaskGroup archiving_{io_.get_executor()};   ///< ends when cancelled
    TaskGroup enqueueing_{io_.get_executor()};  ///< the API's enqueue batches: cancelled once no request is left
    asio::thread_pool blocking_{1};             ///< where the connections are stopped: each stop joins a thread
    std::atomic<bool> stopping_ = false;
    std::atomic<bool> draining_ = false;
    std::atomic<bool> database_ok_ = false;
    std::map<std::pair<std::string, std::string>, double> dead_letter_counts_;
    std::map<std::string, double> next_fires_;
};

Scheduler::Scheduler(asio::io_context& io, SchedulerSettings settings, JobCatalogue catalogue,
                     std::vector<Schedule> schedules, Authenticator authenticator,
                     std::shared_ptr<prometheus::Registry> metrics)
    : impl_(std::make_unique<Impl>(io, std::move(settings), std::move(catalogue), std::move(schedules),
                                   std::move(authenticator), std::move(metrics))) {}

Scheduler::~Scheduler() = default;

asio::awaitable<void> Scheduler::run() {
    co_await impl_->run();
}

void Scheduler::shutdown() {
    impl_->shutdown();
}

std::uint16_t Scheduler::http_port() const noexcept {
    return impl_->http_port();
}

}  // namespace conveyor::scheduler
