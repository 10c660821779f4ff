#pragma once

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <optional>
#include <string>
#include <vector>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/async_condition.hpp"
#include "conveyor/core/http_client.hpp"
#include "conveyor/core/http_server.hpp"
#include "conveyor/core/pg.hpp"
#include "conveyor/scheduler/authenticator.hpp"
#include "conveyor/scheduler/catalogue.hpp"
#include "enqueue_batch.hpp"

namespace conveyor::scheduler {

/// The HTTP enqueue API on the scheduler's port:
///   POST   /v1/jobs             (enqueue)  one job {type, payload, run_at | delay, idempotency_key, correlation_id,
///                                          traceparent, priority, unique_key, unique_for, batch} or
///                                          {"jobs": [...]} (up to 1,000) → 202 {"id"} / {"ids"}
///   GET    /v1/scheduled        (viewer)   scheduled jobs: ?state=pending|published|cancelled|failed|all&type=&limit=
///   DELETE /v1/scheduled/{id}   (operator) cancels a pending job; POST /v1/scheduled/{id}/run makes it due now
///   GET    /v1/jobs/{id}        (viewer)   a job from the history: state, progress, attempts, audit entries
///   GET    /v1/jobs             (viewer)   jobs by their latest event: ?type=&state=&queue=&correlation_id=&since=
///                                          &limit=&after= → {"jobs": [...], "next": cursor | null}
///   DELETE /v1/jobs/{id}        (operator) cancels a job wherever it is → 200 cancelled (it was scheduled), 202
///                                          cancelling or cancel_pending (not on record yet), 409 if it has ended
///   GET    /v1/schedules        (any)      the cron schedules with their next fire times
///   GET    /v1/dead-letters     (viewer)   stored dead letters, oldest first: ?family=&type=&reason=&error=&since=
///                                          &until=&job_id=&fingerprint=&state=dead|replayed|all&limit=
///   GET    /v1/dead-letters/groups (viewer) dead letters grouped by error fingerprint (the same filters)
///   GET    /v1/dead-letters/{id} (viewer)  one dead letter with its headers and payload
///   POST   /v1/dead-letters/replay (operator) {filter, limit, rate, dry_run, to, canary} → what was (or would be)
///                                          replayed
///   POST   /v1/dead-letters/purge  (admin) {filter, expected} → what was deleted; 409 and nothing deleted if the
///                                          matches are not `expected` in number
///   GET    /v1/queues           (viewer)   job queues with their depth per band and what is paused
///   GET    /v1/overview         (viewer)   the last hour per queue (per minute), workers, dead letters, scheduled
///   GET    /v1/workers          (viewer)   the workers on record: running, stopped or gone
///   GET    /v1/audit            (viewer)   the audit log, newest first: ?actor=&action=&job_id=&limit=&before=
///   POST   /v1/queues/{family}/pause|resume (operator) pauses or resumes a family (?type= for one job type)
///   POST   /v1/batches          (enqueue)  opens a batch {id, description, callback, callback_payload} → 201
///   GET    /v1/batches/{id}     (any)      a batch's state, counts and progress
///   GET    /v1/batches          (viewer)   the unfinished batches, then those finished in the last day: ?limit=
///   GET    /v1/flow             (viewer)   the flow limits in force and what they hold back now
///   POST   /v1/batches/{id}/seal (enqueue) seals it ({"expected": N} members in all)
///   POST   /console/api/session  (none)    signs in: {"token"} (a JWT or an API token with a role) → 201 with the
///                                          session cookie and {user, role, csrf_token, expires_at}
///   GET    /console/api/session  (cookie)  who is signed in; DELETE signs out (with X-CSRF-Token)
/// In brackets what a route needs: the enqueue scope (or the operator role), or a role (viewer < operator < admin;
/// the admin scope is the admin role). Every request needs `Authorization: Bearer <token>`: a static token or a
/// JSON Web Token (Authenticator), or the console's session cookie, with X-CSRF-Token for a change; errors are JSON
/// {"error": "..."}. A list of jobs is accepted or refused whole, in one transaction, after every job was checked
/// against the catalogue.
class EnqueueApi {
  public:
    /// The API's broker connections: replays publish on `publisher`, waiting at most `publish_timeout` for each
    /// confirm (their rows stay locked meanwhile); queue depths are asked on `monitor`, whose calls block its thread
    /// until the broker answers and so must not hold up publishes.
    struct Broker {
        amqp::Connection& publisher;
        amqp::Connection& monitor;
        std::chrono::milliseconds publish_timeout;
    };

    /// A replay ends after its current message once `stopping` is set. Reads that may lag (history, audit, dead-letter
    /// listings, the overview) go to `reads`, which may be a standby's pool or `pool` itself.
    EnqueueApi(pg::Pool& pool, pg::Pool& reads, Broker broker, const std::atomic<bool>& stopping,
               const JobCatalogue& catalogue, Authenticator authenticator, double rate_limit,
               prometheus::Registry& metrics);

    void register_routes(HttpServer& server);

    /// The port serves TLS: session cookies carry Secure.
    void use_secure_cookies() noexcept { secure_cookies_ = true; }

    /// The overview shows the alerts of the Prometheus `prometheus` talks to; it must outlive the API.
    void use_prometheus(http::Client& prometheus) noexcept { prometheus_ = &prometheus; }

    /// Waits until no request is being handled: the shutdown's last step once the server stopped taking them, since
    /// they use the database pool.
    boost::asio::awaitable<void> requests_finished();

    /// Writes the enqueue requests' batches (EnqueueBatches) until cancelled, once no request is being handled.
    boost::asio::awaitable<void> write_enqueues() { return enqueues_.serve(); }

  private:
    using Handler = std::function<boost::asio::awaitable<HttpResponse>(const HttpRequest&, const Caller&)>;

    /// Authentication, scope, rate limit, metrics and error handling around a handler.
    HttpServer::AsyncRoute guarded(std::string route, Permission permission, Handler handler);
    /// The handler's answer, or the refusal, or what a database failure (in either) calls for.
    boost::asio::awaitable<HttpResponse> respond(const HttpRequest& request, Permission permission,
                                                 const Handler& handler);
    /// Why the request may not go on (401, 403, 429), or nothing with `caller` set: the Authorization header's
    /// token, else the console's session cookie (and, for a change, its X-CSRF-Token).
    boost::asio::awaitable<std::optional<HttpResponse>> refuse(const HttpRequest& request, Permission permission,
                                                               std::optional<Caller>& caller);
    std::optional<HttpResponse> authenticate_bearer(const HttpRequest& request, std::string_view authorization,
                                                    std::optional<Caller>& caller);
    boost::asio::awaitable<std::optional<HttpResponse>> authenticate_session(const HttpRequest& request,
                                                                             std::string_view cookie,
                                                                             std::optional<Caller>& caller);

    boost::asio::awaitable<HttpResponse> enqueue(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> list_scheduled(const HttpRequest& request, const Caller& caller);
    /// Cancels a pending scheduled job, or makes it due now.
    boost::asio::awaitable<HttpResponse> change_scheduled(bool run_now, const HttpRequest& request,
                                                          const Caller& caller);
    boost::asio::awaitable<HttpResponse> list_schedules(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> show_job(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> list_jobs(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> cancel_job(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> list_queues(const HttpRequest& request, const Caller& caller);
    /// Adds the family's queue depths from the broker (messages and consumers per band, the dead-letter queue's
    /// messages) to `queue`; returns why it could not.
    boost::asio::awaitable<std::optional<std::string>> add_depths(boost::json::object& queue,
                                                                  const std::string& family);
    boost::asio::awaitable<HttpResponse> dead_letter_groups(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> list_workers(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> list_batches(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> show_flow(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> overview(const HttpRequest& request, const Caller& caller);
    /// Prometheus's alerts for the overview: null without Prometheus, {"error"} when it does not answer.
    boost::asio::awaitable<boost::json::value> prometheus_alerts();
    boost::asio::awaitable<HttpResponse> list_audit(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> pause_queue(bool paused, const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> list_dead_letters(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> show_dead_letter(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> replay_dead_letters(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> purge_dead_letters(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> open_batch(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> show_batch(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> seal_batch(const HttpRequest& request, const Caller& caller);
    boost::asio::awaitable<HttpResponse> sign_in(const HttpRequest& request, const Caller& nobody);
    boost::asio::awaitable<HttpResponse> show_session(const HttpRequest& request, const Caller& nobody);
    boost::asio::awaitable<HttpResponse> sign_out(const HttpRequest& request, const Caller& nobody);

    pg::Pool& pool_;
    pg::Pool& reads_;
    EnqueueBatches enqueues_{pool_};
    amqp::Connection& publisher_;
    amqp::Connection& monitor_;
    std::chrono::milliseconds publish_timeout_;
    const std::atomic<bool>& stopping_;
    const JobCatalogue& catalogue_;
    Authenticator authenticator_;
    /// Session cookies carry Secure when the port serves TLS.
    bool secure_cookies_ = false;
    http::Client* prometheus_ = nullptr;
    RateLimiter limiter_;
    /// Requests with unknown tokens can come by the thousand: they are logged once per interval.
    LogThrottle refusal_log_;
    prometheus::Family<prometheus::Counter>& requests_;
    prometheus::Family<prometheus::Histogram>& latency_;
    void request_ended() noexcept;

    std::atomic<int> in_flight_ = 0;
    AsyncCondition idle_;
};

}  // namespace conveyor::scheduler
