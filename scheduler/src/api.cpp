#include "api.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/string.hpp>
#include <memory>

#include "api_json.hpp"
#include "conveyor/core/scheduled_jobs.hpp"
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

/// One field of every job, as a statement's text array.
std::string column(const std::vector<ApiJob>& jobs, std::string ApiJob::*field) {
    std::vector<std::string_view> values;
    values.reserve(jobs.size());
    for (const auto& job : jobs) {
        values.emplace_back(job.*field);
    }
    return pg::text_array(values);
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

}  // namespace

EnqueueApi::EnqueueApi(pg::Pool& pool, Publisher publisher, const std::atomic<bool>& stopping,
                       const JobCatalogue& catalogue, std::vector<ApiToken> tokens, double rate_limit,
                       prometheus::Registry& metrics)
    : pool_(pool),
      publisher_(publisher.connection),
      publish_timeout_(publisher.timeout),
      stopping_(stopping),
      catalogue_(catalogue),
      tokens_(std::move(tokens)),
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
    using namespace std::placeholders;
    server.route("POST", "/v1/jobs", guarded("/v1/jobs", Scope::enqueue, std::bind_front(&EnqueueApi::enqueue, this)));
    server.route("GET", "/v1/jobs", guarded("/v1/jobs", Scope::admin, std::bind_front(&EnqueueApi::list_jobs, this)));
    server.route("GET", "/v1/jobs/{id}",
                 guarded("/v1/jobs/{id}", Scope::admin, std::bind_front(&EnqueueApi::show_job, this)));
    server.route("DELETE", "/v1/jobs/{id}",
                 guarded("/v1/jobs/{id}", Scope::admin, std::bind_front(&EnqueueApi::cancel_job, this)));
    server.route("GET", "/v1/queues",
                 guarded("/v1/queues", Scope::admin, std::bind_front(&EnqueueApi::list_queues, this)));
    server.route(
        "POST", "/v1/queues/{family}/pause",
        guarded("/v1/queues/{family}/pause", Scope::admin, std::bind_front(&EnqueueApi::pause_queue, this, true)));
    server.route(
        "POST", "/v1/queues/{family}/resume",
        guarded("/v1/queues/{family}/resume", Scope::admin, std::bind_front(&EnqueueApi::pause_queue, this, false)));
    server.route("GET", "/v1/scheduled",
                 guarded("/v1/scheduled", Scope::admin, std::bind_front(&EnqueueApi::list_scheduled, this)));
    server.route("DELETE", "/v1/scheduled/{id}",
                 guarded("/v1/scheduled/{id}", Scope::admin, std::bind_front(&EnqueueApi::cancel_scheduled, this)));
    server.route("GET", "/v1/schedules",
                 guarded("/v1/schedules", std::nullopt, std::bind_front(&EnqueueApi::list_schedules, this)));
    server.route("GET", "/v1/dead-letters",
                 guarded("/v1/dead-letters", Scope::admin, std::bind_front(&EnqueueApi::list_dead_letters, this)));
    server.route("GET", "/v1/dead-letters/{id}",
                 guarded("/v1/dead-letters/{id}", Scope::admin, std::bind_front(&EnqueueApi::show_dead_letter, this)));
    server.route(
        "POST", "/v1/dead-letters/replay",
        guarded("/v1/dead-letters/replay", Scope::admin, std::bind_front(&EnqueueApi::replay_dead_letters, this)));
    server.route(
        "POST", "/v1/dead-letters/purge",
        guarded("/v1/dead-letters/purge", Scope::admin, std::bind_front(&EnqueueApi::purge_dead_letters, this)));
    // Batches belong to the services that fill them: the enqueue scope opens, follows and seals them.
    server.route("POST", "/v1/batches",
                 guarded("/v1/batches", Scope::enqueue, std::bind_front(&EnqueueApi::open_batch, this)));
    server.route("GET", "/v1/batches/{id}",
                 guarded("/v1/batches/{id}", Scope::enqueue, std::bind_front(&EnqueueApi::show_batch, this)));
    server.route("POST", "/v1/batches/{id}/seal",
                 guarded("/v1/batches/{id}/seal", Scope::enqueue, std::bind_front(&EnqueueApi::seal_batch, this)));
    if (tokens_.empty()) {
        spdlog::warn("api: no tokens (CONVEYOR_API_TOKENS_FILE): every API request is refused with 401");
    }
}

std::optional<HttpResponse> EnqueueApi::refuse(const HttpRequest& request, std::optional<Scope> scope,
                                               const ApiToken*& token) {
    const auto authorization = request.header("Authorization");
    if (!authorization || !authorization->starts_with("Bearer ") || authorization->size() <= 7) {
        auto response = error_response(401, tokens_.empty() ? "the API has no tokens configured"
                                                            : "an Authorization: Bearer <token> header is required");
        response.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"conveyor\"");
        return response;
    }
    token = find_token(tokens_, authorization->substr(7));
    if (token == nullptr) {
        if (const auto held_back = refusal_log_.admit()) {
            spdlog::warn("api: refused {} {} from {}: unknown token{}", request.method, request.path,
                         request.remote_address, LogThrottle::held_back_note(*held_back));
        }
        auto response = error_response(401, "the token is not valid");
        response.headers.emplace_back("WWW-Authenticate", R"(Bearer realm="conveyor", error="invalid_token")");
        return response;
    }
    if (scope && !token->allows(*scope)) {
        return error_response(403, fmt::format("token '{}' lacks the {} scope", token->name,
                                               *scope == Scope::admin ? "admin" : "enqueue"));
    }
    if (const auto wait = limiter_.try_acquire(*token)) {
        auto response = error_response(429, fmt::format("token '{}' is over its rate limit", token->name));
        response.headers.emplace_back("Retry-After", std::to_string((wait->count() + 999) / 1000));
        return response;
    }
    return std::nullopt;
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

HttpServer::AsyncRoute EnqueueApi::guarded(std::string route, std::optional<Scope> scope, Handler handler) {
    auto& latency = latency_.Add(
        {{"route", route}},
        prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5});
    return [this, route = std::move(route), scope, handler = std::move(handler),
            &latency](const HttpRequest& request) -> asio::awaitable<HttpResponse> {
        const auto started = std::chrono::steady_clock::now();
        ++in_flight_;
        const std::unique_ptr<EnqueueApi, void (*)(EnqueueApi*)> counted(this,
                                                                         [](EnqueueApi* api) { api->request_ended(); });
        const ApiToken* token = nullptr;
        auto refusal = refuse(request, scope, token);
        HttpResponse response;
        if (refusal) {
            response = std::move(*refusal);
        } else {
            std::string failure;
            bool unavailable = false;
            try {
                response = co_await handler(request, *token);
            } catch (const pg::Error& e) {
                failure = e.what();
                unavailable = e.transient();
                if (const auto fault = request_fault(e)) {
                    spdlog::debug("api: {} {} (token {}) refused by the database: {}", request.method, request.path,
                                  token->name, e.what());
                    response = error_response(400, *fault);
                    failure.clear();
                }
            }
            if (!failure.empty()) {
                spdlog::error("api: {} {} (token {}): {}", request.method, request.path, token->name, failure);
                response = unavailable ? error_response(503, "the database is busy or unavailable; try again")
                                       : error_response(500, "internal error");
                if (unavailable) {
                    response.headers.emplace_back("Retry-After", "1");
                }
            }
        }
        requests_.Add({{"route", route}, {"status", std::to_string(response.status)}}).Increment();
        latency.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
        co_return response;
    };
}

asio::awaitable<HttpResponse> EnqueueApi::enqueue(const HttpRequest& request, const ApiToken& token) {
    EnqueueRequest parsed;
    try {
        parsed = parse_enqueue_request(request.body, catalogue_, std::chrono::system_clock::now());
    } catch (const InvalidRequest& e) {
        auto response = error_response(400, e.what());
        co_return response;
    }
    const auto& jobs = parsed.jobs;
    // The token's name, not its secret, names the idempotency keys' namespace: they survive a token's rotation.
    const auto source = fmt::format("api:{}", token.name);
    pg::Result rows;
    std::optional<HttpResponse> refusal;
    try {
        rows = co_await pool_.query(
            "SELECT conveyor.enqueue(j.type, j.payload::jsonb, coalesce(nullif(j.run_at, '')::timestamptz, now()), "
            "nullif(j.key, ''), nullif(j.correlation, ''), nullif(j.traceparent, ''), $7, "
            "coalesce(nullif(j.priority, ''), 'normal'), nullif(j.unique_key, ''), "
            "coalesce(nullif(j.unique_for, '')::integer, 0), nullif(j.batch, '')) "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $8::text[], "
            "$9::text[], $10::text[], $11::text[]) WITH ORDINALITY "
            "AS j(type, payload, run_at, key, correlation, traceparent, priority, unique_key, unique_for, batch, n) "
            "ORDER BY j.n",
            column(jobs, &ApiJob::type), column(jobs, &ApiJob::payload), column(jobs, &ApiJob::run_at),
            column(jobs, &ApiJob::idempotency_key), column(jobs, &ApiJob::correlation_id),
            column(jobs, &ApiJob::traceparent), source, column(jobs, &ApiJob::priority),
            column(jobs, &ApiJob::unique_key), column(jobs, &ApiJob::unique_for), column(jobs, &ApiJob::batch));
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
        auto response = json_response(202, boost::json::object{{"id", rows.text(0, 0)}});
        co_return response;
    }
    boost::json::array ids;
    for (int row = 0; row < rows.rows(); ++row) {
        ids.emplace_back(rows.text(row, 0));
    }
    auto response = json_response(202, boost::json::object{{"ids", std::move(ids)}});
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::list_scheduled(const HttpRequest& request, const ApiToken& /*token*/) {
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

asio::awaitable<HttpResponse> EnqueueApi::cancel_scheduled(const HttpRequest& request, const ApiToken& token) {
    const std::string id(request.param("id").value_or(""));
    if (!scheduled_jobs::is_job_id(id)) {
        auto response = error_response(400, fmt::format("'{}' is not a job id (a UUID)", id));
        co_return response;
    }
    const auto outcome = co_await scheduled_jobs::cancel(pool_, id);
    if (outcome.result == scheduled_jobs::Cancel::not_found) {
        auto response = error_response(404, fmt::format("no scheduled job {}", id));
        co_return response;
    }
    if (outcome.result == scheduled_jobs::Cancel::not_pending) {
        auto response = error_response(409, fmt::format("job {} is {}, not pending", id, outcome.state));
        co_return response;
    }
    spdlog::info("api: token {} cancelled scheduled job {}", token.name, id);
    auto response = json_response(200, boost::json::object{{"id", id}, {"state", "cancelled"}});
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::list_schedules(const HttpRequest& /*request*/, const ApiToken& /*token*/) {
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
