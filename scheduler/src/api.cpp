#include "api.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/string.hpp>
#include <memory>

#include "api_json.hpp"
#include "console_sessions.hpp"
#include "conveyor/admin/scheduled_jobs.hpp"
#include "enqueue_batch.hpp"
#include "enqueue_request.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;

namespace {

/// What was wrong with the request when the database refused a value in it (SQLSTATE class 22, data exception),
/// said in the request's terms rather than PostgreSQL's. The handlers check what they can first; this is for what
/// only the database finds.
std::optional<std::string> request_fault(const pg::Error& error) {
    const std::string_view code = error.sqlstate();
    if (!code.starts_with("22")) {
        return std::nullopt;
    }
    if (code == "22021" || code == "22P05") {
        return "a value in the request holds U+0000 or bytes that are not UTF-8, which cannot be stored";
    }
    if (code == "22001") {
        return "a value in the request is too long";
    }
    if (code == "22003") {
        return "a number in the request is out of range";
    }
    if (code == "22007" || code == "22008") {
        return "a date or time in the request is invalid or out of range";
    }
    return "a value in the request is malformed";
}

/// What conveyor.enqueue() refuses because of the request, as its answer: a key that already names a job of
/// another type, payload or batch (409), a batch that does not exist (404) or is sealed (409); empty for others.
std::optional<HttpResponse> enqueue_refusal(const pg::Error& error) {
    const std::string_view code = error.sqlstate();
    if (code == "23505" || code == "55000") {
        return error_response(409, error.message());
    }
    if (code == "P0002") {
        return error_response(404, error.message());
    }
    return std::nullopt;
}

/// What a permission takes, for a 403's message.
std::string_view needed(Permission permission) {
    switch (permission) {
        case Permission::none:
        case Permission::authenticated:
            return "enqueue scope or a role";
        case Permission::enqueue:
            return "enqueue scope (or the operator role)";
        case Permission::view:
            return "viewer role (or more)";
        case Permission::operate:
            return "operator role (or admin)";
        case Permission::administer:
            return "admin role";
    }
    return "admin role";
}

/// The answer to a request the database failed: 400 for what the request holds (a value PostgreSQL cannot store),
/// 503 with Retry-After while it is unavailable, 500 otherwise; logged once.
HttpResponse database_failure(const HttpRequest& request, std::string_view caller, const pg::Error& error) {
    if (const auto fault = request_fault(error)) {
        spdlog::debug("api: {} {} ({}) refused by the database: {}", request.method, request.path, caller,
                      error.what());
        return error_response(400, *fault);
    }
    spdlog::error("api: {} {} ({}): {}", request.method, request.path, caller, error.what());
    if (!error.transient()) {
        return error_response(500, "internal error");
    }
    auto response = error_response(503, "the database is busy or unavailable; try again");
    response.headers.emplace_back("Retry-After", "1");
    return response;
}

}  // namespace

EnqueueApi::EnqueueApi(pg::Pool& pool, pg::Pool& reads, Broker broker, const std::atomic<bool>& stopping,
                       const JobCatalogue& catalogue, Authenticator authenticator, double rate_limit,
                       prometheus::Registry& metrics)
    : pool_(pool),
      reads_(reads),
      publisher_(broker.publisher),
      monitor_(broker.monitor),
      publish_timeout_(broker.publish_timeout),
      stopping_(stopping),
      catalogue_(catalogue),
      authenticator_(std::move(authenticator)),
      limiter_(rate_limit),
      requests_(prometheus::BuildCounter()
                    .Name("conveyor_api_requests_total")
                    .Help("HTTP API requests by route and status code")
                    .Register(metrics)),
      latency_(prometheus::BuildHistogram()
                   .Name("conveyor_api_request_seconds")
                   .Help("HTTP API request handling time by route")
                   .Register(metrics)) {}

void EnqueueApi::register_routes(HttpServer& server) {
    const auto add = [&](std::string_view method, const std::string& pattern, Permission permission, Handler handler) {
        server.route(std::string(method), pattern, guarded(pattern, permission, std::move(handler)));
    };
    using P = Permission;
    add("POST", "/v1/jobs", P::enqueue, std::bind_front(&EnqueueApi::enqueue, this));
    add("GET", "/v1/jobs", P::view, std::bind_front(&EnqueueApi::list_jobs, this));
    add("GET", "/v1/jobs/{id}", P::view, std::bind_front(&EnqueueApi::show_job, this));
    add("DELETE", "/v1/jobs/{id}", P::operate, std::bind_front(&EnqueueApi::cancel_job, this));
    add("GET", "/v1/queues", P::view, std::bind_front(&EnqueueApi::list_queues, this));
    add("POST", "/v1/queues/{family}/pause", P::operate, std::bind_front(&EnqueueApi::pause_queue, this, true));
    add("POST", "/v1/queues/{family}/resume", P::operate, std::bind_front(&EnqueueApi::pause_queue, this, false));
    add("GET", "/v1/overview", P::view, std::bind_front(&EnqueueApi::overview, this));
    add("GET", "/v1/workers", P::view, std::bind_front(&EnqueueApi::list_workers, this));
    add("GET", "/v1/audit", P::view, std::bind_front(&EnqueueApi::list_audit, this));
    add("GET", "/v1/scheduled", P::view, std::bind_front(&EnqueueApi::list_scheduled, this));
    add("DELETE", "/v1/scheduled/{id}", P::operate, std::bind_front(&EnqueueApi::change_scheduled, this, false));
    add("POST", "/v1/scheduled/{id}/run", P::operate, std::bind_front(&EnqueueApi::change_scheduled, this, true));
    add("GET", "/v1/schedules", P::authenticated, std::bind_front(&EnqueueApi::list_schedules, this));
    add("GET", "/v1/dead-letters", P::view, std::bind_front(&EnqueueApi::list_dead_letters, this));
    add("GET", "/v1/dead-letters/groups", P::view, std::bind_front(&EnqueueApi::dead_letter_groups, this));
    add("GET", "/v1/dead-letters/{id}", P::view, std::bind_front(&EnqueueApi::show_dead_letter, this));
    add("POST", "/v1/dead-letters/replay", P::operate, std::bind_front(&EnqueueApi::replay_dead_letters, this));
    add("POST", "/v1/dead-letters/purge", P::administer, std::bind_front(&EnqueueApi::purge_dead_letters, this));
    // Batches belong to the services that fill them: the enqueue scope opens, follows and seals them.
    add("POST", "/v1/batches", P::enqueue, std::bind_front(&EnqueueApi::open_batch, this));
    add("GET", "/v1/batches", P::view, std::bind_front(&EnqueueApi::list_batches, this));
    add("GET", "/v1/flow", P::view, std::bind_front(&EnqueueApi::show_flow, this));
    add("GET", "/v1/batches/{id}", P::authenticated, std::bind_front(&EnqueueApi::show_batch, this));
    add("POST", "/v1/batches/{id}/seal", P::enqueue, std::bind_front(&EnqueueApi::seal_batch, this));
    add("POST", "/console/api/session", P::none, std::bind_front(&EnqueueApi::sign_in, this));
    add("GET", "/console/api/session", P::none, std::bind_front(&EnqueueApi::show_session, this));
    add("DELETE", "/console/api/session", P::none, std::bind_front(&EnqueueApi::sign_out, this));
    if (!authenticator_.configured()) {
        spdlog::warn(
            "api: no tokens (CONVEYOR_API_TOKENS_FILE) and no JWT key (CONVEYOR_JWT_SECRET_FILE or "
            "CONVEYOR_JWT_PUBLIC_KEY_FILE): every API request is refused with 401");
    }
}

asio::awaitable<std::optional<HttpResponse>> EnqueueApi::refuse(const HttpRequest& request, Permission permission,
                                                                std::optional<Caller>& caller) {
    if (permission == Permission::none) {
        caller.emplace();
        co_return std::nullopt;
    }
    std::optional<HttpResponse> refusal;
    const auto authorization = request.header("Authorization");
    const auto cookie = console_sessions::cookie_value(request.header("Cookie").value_or(""));
    if (authorization || !cookie) {
        refusal = authenticate_bearer(request, authorization.value_or(""), caller);
    } else {
        refusal = co_await authenticate_session(request, *cookie, caller);
    }
    if (refusal) {
        co_return refusal;
    }
    if (!caller->may(permission)) {
        co_return error_response(403, fmt::format("{} lacks the {} this needs", caller->name, needed(permission)));
    }
    if (const auto wait = limiter_.try_acquire(*caller)) {
        auto response = error_response(429, fmt::format("{} is over its rate limit", caller->name));
        response.headers.emplace_back("Retry-After", std::to_string((wait->count() + 999) / 1000));
        co_return response;
    }
    co_return std::nullopt;
}

std::optional<HttpResponse> EnqueueApi::authenticate_bearer(const HttpRequest& request, std::string_view authorization,
                                                            std::optional<Caller>& caller) {
    if (!authorization.starts_with("Bearer ") || authorization.size() <= 7) {
        auto response =
            error_response(401, authenticator_.configured() ? "an Authorization: Bearer <token> header is required"
                                                            : "the API has no tokens configured");
        response.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"conveyor\"");
        return response;
    }
    auto outcome = authenticator_.authenticate(authorization.substr(7), std::chrono::system_clock::now());
    if (!outcome.caller) {
        if (const auto held_back = refusal_log_.admit()) {
            spdlog::warn("api: refused {} {} from {}: {}{}", request.method, request.path, request.remote_address,
                         outcome.refusal.reason, LogThrottle::held_back_note(*held_back));
        }
        auto response = error_response(outcome.refusal.status, outcome.refusal.reason);
        if (outcome.refusal.status == 401) {
            response.headers.emplace_back("WWW-Authenticate", R"(Bearer realm="conveyor", error="invalid_token")");
        }
        return response;
    }
    caller = std::move(outcome.caller);
    return std::nullopt;
}

asio::awaitable<std::optional<HttpResponse>> EnqueueApi::authenticate_session(const HttpRequest& request,
                                                                              std::string_view cookie,
                                                                              std::optional<Caller>& caller) {
    auto session = co_await console_sessions::find(pool_, cookie);
    if (!session) {
        co_return error_response(401, "the console session has ended: sign in again");
    }
    // The browser sends the cookie with any request to this site, including one another site makes it send: a
    // change also needs the token only the console's own page can read.
    const bool reads = request.method == "GET" || request.method == "HEAD";
    if (!reads && !console_sessions::csrf_matches(*session, request.header("X-CSRF-Token").value_or(""))) {
        co_return error_response(403, "a change made with the console's session needs its X-CSRF-Token header");
    }
    caller = std::move(session->caller);
    co_return std::nullopt;
}

void EnqueueApi::request_ended() noexcept {
    if (--in_flight_ == 0) {
        idle_.notify_all();
    }
}

asio::awaitable<void> EnqueueApi::requests_finished() {
    const auto idle = [this] { return in_flight_ == 0; };
    co_await idle_.wait(idle);
}

HttpServer::AsyncRoute EnqueueApi::guarded(std::string route, Permission permission, Handler handler) {
    auto& latency = latency_.Add(
        {{"route", route}},
        prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5});
    return [this, route = std::move(route), permission, handler = std::move(handler),
            &latency](const HttpRequest& request) -> asio::awaitable<HttpResponse> {
        const auto started = std::chrono::steady_clock::now();
        ++in_flight_;
        const std::unique_ptr<EnqueueApi, void (*)(EnqueueApi*)> counted(this,
                                                                         [](EnqueueApi* api) { api->request_ended(); });
        auto response = co_await respond(request, permission, handler);
        requests_.Add({{"route", route}, {"status", std::to_string(response.status)}}).Increment();
        latency.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
        co_return response;
    };
}

asio::awaitable<HttpResponse> EnqueueApi::respond(const HttpRequest& request, Permission permission,
                                                  const Handler& handler) {
    std::optional<Caller> caller;
    std::optional<pg::Error> failure;
    try {
        auto refusal = co_await refuse(request, permission, caller);
        if (refusal) {
            co_return std::move(*refusal);
        }
        co_return co_await handler(request, *caller);
    } catch (const pg::Error& e) {
        failure = e;
    }
    co_return database_failure(request, caller ? caller->name : std::string("-"), *failure);
}

asio::awaitable<HttpResponse> EnqueueApi::enqueue(const HttpRequest& request, const Caller& caller) {
    EnqueueRequest parsed;
    try {
        parsed = parse_enqueue_request(request.body, catalogue_, std::chrono::system_clock::now());
    } catch (const InvalidRequest& e) {
        auto response = error_response(400, e.what());
        co_return response;
    }
    // The token's name, not its secret, names the idempotency keys' namespace: they survive a token's rotation.
    EnqueueBatches::Request batched{std::move(parsed.jobs), caller.source()};
    std::vector<std::string> ids;
    std::optional<HttpResponse> refusal;
    try {
        ids = co_await enqueues_.enqueue(std::move(batched));
    } catch (const pg::Error& e) {
        refusal = enqueue_refusal(e);
        if (!refusal) {
            throw;
        }
    }
    if (refusal) {
        co_return std::move(*refusal);
    }
    if (!parsed.listed) {
        auto response = json_response(202, boost::json::object{{"id", ids.at(0)}});
        co_return response;
    }
    boost::json::array listed;
    for (auto& id : ids) {
        listed.emplace_back(std::move(id));
    }
    auto response = json_response(202, boost::json::object{{"ids", std::move(listed)}});
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::list_scheduled(const HttpRequest& request, const Caller& /*caller*/) {
    const auto state = request.query_param("state").value_or("pending");
    if (state != "all" && !scheduled_jobs::is_state(state)) {
        auto response = error_response(400, "state must be pending, published, cancelled, failed or all");
        co_return response;
    }
    const auto type = request.query_param("type");
    std::int64_t limit = 0;
    try {
        limit = listing_limit(request);
    } catch (const std::invalid_argument& e) {
        auto response = error_response(400, e.what());
        co_return response;
    }
    scheduled_jobs::Filter filter;
    if (state != "all") {
        filter.state = state;
    }
    filter.type = type;
    filter.limit = limit;
    const auto rows = co_await scheduled_jobs::list(pool_, filter);
    boost::json::array jobs;
    for (int row = 0; row < rows.rows(); ++row) {
        jobs.emplace_back(boost::json::object{
            {"id", rows.text(row, 0)},
            {"type", rows.text(row, 1)},
            {"run_at", rows.text(row, 2)},
            {"state", rows.text(row, 3)},
            {"source", rows.text(row, 4)},
            {"idempotency_key", json_or_null(rows, row, 5)},
            {"correlation_id", json_or_null(rows, row, 6)},
            {"payload", stored_json(rows.text(row, 7))},
            {"error", json_or_null(rows, row, 8)},
            {"priority", rows.text(row, 9)},
        });
    }
    auto response = json_response(200, boost::json::object{{"jobs", std::move(jobs)}});
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::change_scheduled(bool run_now, const HttpRequest& request,
                                                           const Caller& caller) {
    const std::string id(request.param("id").value_or(""));
    if (!scheduled_jobs::is_job_id(id)) {
        auto response = error_response(400, fmt::format("'{}' is not a job id (a UUID)", id));
        co_return response;
    }
    const auto source = caller.source();
    scheduled_jobs::ChangeOutcome outcome;
    if (run_now) {
        outcome = co_await scheduled_jobs::run_now(pool_, id, source);
    } else {
        outcome = co_await scheduled_jobs::cancel(pool_, id, source);
    }
    if (outcome.result == scheduled_jobs::Change::not_found) {
        auto response = error_response(404, fmt::format("no scheduled job {}", id));
        co_return response;
    }
    if (outcome.result == scheduled_jobs::Change::not_pending) {
        auto response = error_response(409, fmt::format("job {} is {}, not pending", id, outcome.state));
        co_return response;
    }
    spdlog::info("api: {} {} scheduled job {}", caller.name, run_now ? "made due now" : "cancelled", id);
    auto response = json_response(200, boost::json::object{{"id", id}, {"state", run_now ? "pending" : "cancelled"}});
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::list_schedules(const HttpRequest& /*request*/, const Caller& /*caller*/) {
    const auto rows = co_await scheduled_jobs::list_schedules(pool_);
    boost::json::array schedules;
    for (int row = 0; row < rows.rows(); ++row) {
        schedules.emplace_back(boost::json::object{
            {"name", rows.text(row, 0)},
            {"cron", rows.text(row, 1)},
            {"timezone", rows.text(row, 2)},
            {"type", rows.text(row, 3)},
            {"payload", stored_json(rows.text(row, 4))},
            {"misfire", rows.text(row, 5)},
            {"next_fire_at", json_or_null(rows, row, 6)},
            {"last_fire_at", rows.text(row, 7)},
            {"fired", rows.integer(row, 8)},
            {"misfired", rows.integer(row, 9)},
        });
    }
    auto response = json_response(200, boost::json::object{{"schedules", std::move(schedules)}});
    co_return response;
}

}  // namespace conveyor::scheduler
