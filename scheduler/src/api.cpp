#include "api.hpp"

#include <fmt/format.h>
#include <simdjson.h>
#include <spdlog/spdlog.h>

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/string.hpp>
#include <memory>
#include <regex>

#include "api_json.hpp"
#include "conveyor/core/config.hpp"
#include "conveyor/core/scheduled_jobs.hpp"
#include "conveyor/core/trace.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;

namespace {

constexpr std::size_t kMaxBatch = 1000;
constexpr std::size_t kMaxIdentifierBytes = 255;
constexpr auto kMaxDelay = std::chrono::hours(24 * 365 * 10);

// RFC 3339 with an explicit offset: a time without one would be read in the database session's time zone.
const std::regex kTimestamp(R"(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?([Zz]|[+-]\d{2}(:?\d{2})?))");

/// A job as the API received it, checked; empty strings stand for absent values (SQL NULL / now()).
struct ApiJob {
    std::string type;
    std::string payload = "{}";
    std::string run_at;
    std::string idempotency_key;
    std::string correlation_id;
    std::string traceparent;
};

class InvalidJob : public std::invalid_argument {
  public:
    using std::invalid_argument::invalid_argument;
};

std::string bounded_string(simdjson::dom::element value, std::string_view field, std::size_t limit) {
    std::string_view text;
    if (value.get(text) != simdjson::SUCCESS) {
        throw InvalidJob(fmt::format("{} must be a string", field));
    }
    if (text.empty() || text.size() > limit) {
        throw InvalidJob(fmt::format("{} must be 1 to {} bytes", field, limit));
    }
    return std::string(text);
}

std::string run_at_after(std::chrono::milliseconds delay) {
    return utc_timestamp(std::chrono::system_clock::now() + delay);
}

ApiJob read_job(simdjson::dom::element element, const JobCatalogue& catalogue) {
    simdjson::dom::object object;
    if (element.get(object) != simdjson::SUCCESS) {
        throw InvalidJob("a job must be a JSON object");
    }
    ApiJob job;
    bool delayed = false;
    for (const auto field : object) {
        const auto key = field.key;
        if (key == "type") {
            job.type = bounded_string(field.value, "type", 255);
        } else if (key == "payload") {
            if (!field.value.is_object()) {
                throw InvalidJob("payload must be a JSON object");
            }
            job.payload = simdjson::minify(field.value);
        } else if (key == "run_at") {
            job.run_at = bounded_string(field.value, "run_at", 64);
            if (!std::regex_match(job.run_at, kTimestamp)) {
                throw InvalidJob(
                    fmt::format("run_at '{}' is not an RFC 3339 time with an offset, e.g. "
                                "2026-12-24T18:00:00Z",
                                job.run_at));
            }
        } else if (key == "delay") {
            delayed = true;
            std::chrono::milliseconds delay{};
            double seconds = 0;
            std::string_view text;
            if (field.value.get(seconds) == simdjson::SUCCESS) {
                if (!(seconds >= 0) || seconds > std::chrono::duration<double>(kMaxDelay).count()) {
                    throw InvalidJob("delay must be from 0 to 10 years of seconds");
                }
                delay = std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000));
            } else if (field.value.get(text) == simdjson::SUCCESS) {
                try {
                    delay = parse_duration(text);
                } catch (const std::invalid_argument& e) {
                    throw InvalidJob(fmt::format("delay: {}", e.what()));
                }
                if (delay > kMaxDelay) {
                    throw InvalidJob("delay must be at most 10 years");
                }
            } else {
                throw InvalidJob("delay must be seconds (a number) or a duration such as \"90s\"");
            }
            job.run_at = run_at_after(delay);
        } else if (key == "idempotency_key") {
            job.idempotency_key = bounded_string(field.value, "idempotency_key", kMaxIdentifierBytes);
        } else if (key == "correlation_id") {
            job.correlation_id = bounded_string(field.value, "correlation_id", kMaxIdentifierBytes);
        } else if (key == "traceparent") {
            job.traceparent = bounded_string(field.value, "traceparent", 55);
            if (!Traceparent::parse(job.traceparent)) {
                throw InvalidJob("traceparent must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)");
            }
        } else {
            throw InvalidJob(
                fmt::format("unknown field '{}' (known: type, payload, run_at, delay, idempotency_key, "
                            "correlation_id, traceparent)",
                            key));
        }
    }
    if (job.type.empty()) {
        throw InvalidJob("type is required");
    }
    if (delayed && object["run_at"].error() == simdjson::SUCCESS) {
        throw InvalidJob("give run_at or delay, not both");
    }
    if (auto refusal = check_job(catalogue, job.type, job.payload)) {
        throw InvalidJob(*refusal);
    }
    return job;
}

}  // namespace

EnqueueApi::EnqueueApi(pg::Pool& pool, amqp::Connection& publisher, const std::atomic<bool>& stopping,
                       const JobCatalogue& catalogue, std::vector<ApiToken> tokens, double rate_limit,
                       prometheus::Registry& metrics)
    : pool_(pool),
      publisher_(publisher),
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
        spdlog::warn("api: {} {} from {} with an unknown token", request.method, request.path, request.remote_address);
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

HttpServer::AsyncRoute EnqueueApi::guarded(std::string route, std::optional<Scope> scope, Handler handler) {
    auto& latency = latency_.Add(
        {{"route", route}},
        prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5});
    return [this, route = std::move(route), scope, handler = std::move(handler),
            &latency](const HttpRequest& request) -> asio::awaitable<HttpResponse> {
        const auto started = std::chrono::steady_clock::now();
        ++in_flight_;
        const std::unique_ptr<std::atomic<int>, void (*)(std::atomic<int>*)> counted(
            &in_flight_, [](std::atomic<int>* count) { --*count; });
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
                if (e.sqlstate().starts_with("22")) {
                    response = error_response(400, e.what());
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
    simdjson::dom::parser parser;
    simdjson::dom::element body;
    if (const auto error = parser.parse(request.body).get(body)) {
        auto response =
            error_response(400, fmt::format("the body is not valid JSON: {}", simdjson::error_message(error)));
        co_return response;
    }
    std::vector<ApiJob> jobs;
    simdjson::dom::array batch;
    const bool is_batch = body.is_object() && body["jobs"].error() == simdjson::SUCCESS;
    std::string failure;
    if (is_batch) {
        if (body["jobs"].get(batch) != simdjson::SUCCESS || batch.size() == 0 || batch.size() > kMaxBatch) {
            auto response = error_response(400, fmt::format("jobs must be an array of 1 to {} jobs", kMaxBatch));
            co_return response;
        }
        if (body.get_object().size() != 1) {
            auto response = error_response(400, "a batch is {\"jobs\": [...]} with no other field");
            co_return response;
        }
        std::size_t index = 0;
        for (const auto element : batch) {
            try {
                jobs.push_back(read_job(element, catalogue_));
            } catch (const InvalidJob& e) {
                failure = fmt::format("jobs[{}]: {}", index, e.what());
                break;
            }
            ++index;
        }
    } else {
        try {
            jobs.push_back(read_job(body, catalogue_));
        } catch (const InvalidJob& e) {
            failure = e.what();
        }
    }
    if (!failure.empty()) {
        auto response = error_response(400, failure);
        co_return response;
    }

    std::vector<std::string> types, payloads, run_ats, keys, correlations, traceparents;
    for (auto& job : jobs) {
        types.push_back(std::move(job.type));
        payloads.push_back(std::move(job.payload));
        run_ats.push_back(std::move(job.run_at));
        keys.push_back(std::move(job.idempotency_key));
        correlations.push_back(std::move(job.correlation_id));
        traceparents.push_back(std::move(job.traceparent));
    }
    const auto type_array = pg::text_array(types);
    const auto payload_array = pg::text_array(payloads);
    const auto run_at_array = pg::text_array(run_ats);
    const auto key_array = pg::text_array(keys);
    const auto correlation_array = pg::text_array(correlations);
    const auto traceparent_array = pg::text_array(traceparents);
    const auto source = fmt::format("api:{}", token.name);
    const auto rows = co_await pool_.query(
        "SELECT conveyor.enqueue(j.type, j.payload::jsonb, coalesce(nullif(j.run_at, '')::timestamptz, now()), "
        "nullif(j.key, ''), nullif(j.correlation, ''), nullif(j.traceparent, ''), $7) "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY "
        "AS j(type, payload, run_at, key, correlation, traceparent, n) ORDER BY j.n",
        type_array, payload_array, run_at_array, key_array, correlation_array, traceparent_array, source);
    if (!is_batch) {
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
            {"payload", boost::json::parse(rows.text(row, 7))},
            {"error", json_or_null(rows, row, 8)},
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
            {"payload", boost::json::parse(rows.text(row, 4))},
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
