#include <fmt/format.h>
#include <simdjson.h>
#include <spdlog/spdlog.h>

#include <array>
#include <boost/json/array.hpp>
#include <boost/json/parse.hpp>

#include "api.hpp"
#include "api_json.hpp"
#include "conveyor/admin/dead_letters.hpp"
#include "conveyor/core/envelope.hpp"
#include "conveyor/core/json.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;

namespace {

// A replay runs inside its HTTP request; a longer one belongs to `conveyor dlq replay`, which shows progress and
// can be interrupted.
constexpr double kMaxReplaySeconds = 300;

/// Maps `state` as the API takes it (dead, replayed, all) onto the filter.
void set_state(dead_letters::Filter& filter, std::string_view state) {
    if (state == "all") {
        filter.state.reset();
    } else {
        filter.state = std::string(state);
    }
}

/// A query parameter; present but empty is refused rather than read as a filter that matches nothing.
std::optional<std::string> query_value(const HttpRequest& request, std::string_view name) {
    auto value = request.query_param(name);
    if (value && value->empty()) {
        throw InvalidRequest(fmt::format("{} must not be empty", name));
    }
    return value;
}

/// The filter's fields by the name the API gives them, in query parameters, POST bodies and answers alike.
using FilterField = std::optional<std::string> dead_letters::Filter::*;
constexpr std::array<std::pair<std::string_view, FilterField>, 8> kFilterFields = {{
    {"family", &dead_letters::Filter::family},
    {"type", &dead_letters::Filter::type},
    {"reason", &dead_letters::Filter::reason},
    {"error", &dead_letters::Filter::error_contains},
    {"since", &dead_letters::Filter::since},
    {"until", &dead_letters::Filter::until},
    {"job_id", &dead_letters::Filter::job_id},
    {"fingerprint", &dead_letters::Filter::fingerprint},
}};

/// The filter from a GET's query parameters.
dead_letters::Filter query_filter(const HttpRequest& request) {
    dead_letters::Filter filter;
    for (const auto& [name, field] : kFilterFields) {
        filter.*field = query_value(request, name);
    }
    if (const auto state = query_value(request, "state")) {
        set_state(filter, *state);
    }
    filter.validate();
    return filter;
}

/// The filter from a POST body's "filter" object: the same names as the query parameters.
dead_letters::Filter body_filter(simdjson::dom::object object) {
    dead_letters::Filter filter;
    for (const auto entry : object) {
        std::string_view text;
        if (entry.value.get(text) != simdjson::SUCCESS || text.empty()) {
            throw InvalidRequest(fmt::format("filter.{} must be a non-empty string", entry.key));
        }
        const auto known = std::find_if(kFilterFields.begin(), kFilterFields.end(),
                                        [&entry](const auto& field) { return field.first == entry.key; });
        if (entry.key == "state") {
            set_state(filter, text);
        } else if (known != kFilterFields.end()) {
            filter.*(known->second) = std::string(text);
        } else {
            throw InvalidRequest(fmt::format(
                "unknown filter field '{}' (known: family, type, reason, error, since, until, job_id, fingerprint, "
                "state)",
                entry.key));
        }
    }
    filter.validate();
    return filter;
}

boost::json::object filter_json(const dead_letters::Filter& filter) {
    boost::json::object json;
    for (const auto& [name, field] : kFilterFields) {
        if (filter.*field) {
            json[name] = *(filter.*field);
        }
    }
    json["state"] = filter.state.value_or("all");
    return json;
}

dead_letters::Filter filter_of(simdjson::dom::object body) {
    simdjson::dom::element element;
    if (body["filter"].get(element) != simdjson::SUCCESS) {
        throw InvalidRequest("a filter is required; {\"filter\": {}} selects every dead letter");
    }
    simdjson::dom::object object;
    if (element.get(object) != simdjson::SUCCESS) {
        throw InvalidRequest("filter must be a JSON object");
    }
    return body_filter(object);
}

boost::json::array counts_json(const pg::Result& rows, int type_column, int reason_column, int count_column) {
    boost::json::array counts;
    for (int row = 0; row < rows.rows(); ++row) {
        counts.emplace_back(boost::json::object{{"type", rows.text(row, type_column)},
                                                {"reason", rows.text(row, reason_column)},
                                                {"count", rows.integer(row, count_column)}});
    }
    return counts;
}

}  // namespace

asio::awaitable<HttpResponse> EnqueueApi::list_dead_letters(const HttpRequest& request, const Caller& /*caller*/) {
    dead_letters::Filter filter;
    std::int64_t limit = 0;
    try {
        filter = query_filter(request);
        limit = listing_limit(request);
    } catch (const std::invalid_argument& e) {
        auto response = error_response(400, e.what());
        co_return response;
    }
    const auto rows = co_await dead_letters::list(reads_, filter, limit);
    boost::json::array letters;
    for (int row = 0; row < rows.rows(); ++row) {
        letters.emplace_back(boost::json::object{
            {"id", rows.integer(row, 0)},
            {"job_id", rows.text(row, 1)},
            {"type", rows.text(row, 2)},
            {"family", rows.text(row, 3)},
            {"reason", rows.text(row, 4)},
            {"attempts", rows.integer(row, 5)},
            {"failed_at", rows.text(row, 6)},
            {"error", rows.text(row, 7)},
            {"fingerprint", rows.text(row, 8)},
            {"state", rows.text(row, 9)},
            {"correlation_id", json_or_null(rows, row, 10)},
        });
    }
    auto response = json_response(200, boost::json::object{{"dead_letters", std::move(letters)}});
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::dead_letter_groups(const HttpRequest& request, const Caller& /*caller*/) {
    dead_letters::Filter filter;
    try {
        filter = query_filter(request);
    } catch (const std::invalid_argument& e) {
        auto response = error_response(400, e.what());
        co_return response;
    }
    const auto rows = co_await dead_letters::groups(reads_, filter);
    boost::json::array groups;
    for (int row = 0; row < rows.rows(); ++row) {
        groups.emplace_back(boost::json::object{
            {"fingerprint", rows.text(row, 0)},
            {"count", rows.integer(row, 1)},
            {"error_pattern", rows.text(row, 2)},
            {"types", rows.text(row, 3)},
            {"first_failed_at", rows.text(row, 4)},
            {"last_failed_at", rows.text(row, 5)},
            {"example_error", rows.text(row, 6)},
        });
    }
    auto response = json_response(200, boost::json::object{{"groups", std::move(groups)}});
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::show_dead_letter(const HttpRequest& request, const Caller& /*caller*/) {
    const auto text = request.param("id").value_or("");
    const auto id = parse_integer(text);
    if (!id || *id < 1) {
        auto response =
            error_response(400, fmt::format("'{}' is not a dead letter id (see GET /v1/dead-letters)", text));
        co_return response;
    }
    const auto rows = co_await dead_letters::show(reads_, *id);
    if (rows.rows() == 0) {
        auto response = error_response(404, fmt::format("no dead letter {}", *id));
        co_return response;
    }
    boost::json::object letter{
        {"id", rows.integer(0, 0)},
        {"job_id", rows.text(0, 1)},
        {"type", rows.text(0, 2)},
        {"family", rows.text(0, 3)},
        {"queue", rows.text(0, 4)},
        {"routing_key", rows.text(0, 5)},
        {"reason", rows.text(0, 6)},
        {"attempts", rows.integer(0, 7)},
        {"failed_at", rows.text(0, 8)},
        {"archived_at", rows.text(0, 9)},
        {"error", rows.text(0, 10)},
        {"error_pattern", rows.text(0, 11)},
        {"fingerprint", rows.text(0, 12)},
        {"correlation_id", json_or_null(rows, 0, 13)},
        {"headers", stored_json(rows.text(0, 14))},
        {"state", rows.text(0, 16)},
        {"replayed_at", json_or_null(rows, 0, 17)},
        {"replayed_by", json_or_null(rows, 0, 18)},
        {"replayed_as", json_or_null(rows, 0, 19)},
    };
    // The body as it was: a JSON payload inline, anything else (the reason it may be here) as hex.
    const auto body = dead_letters::decode_body(rows.text(0, 15));
    if (auto payload = json::parse_stored(body)) {
        letter["payload"] = std::move(*payload);
    } else {
        letter["body_hex"] = rows.text(0, 15);
    }
    auto response = json_response(200, letter);
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::replay_dead_letters(const HttpRequest& request, const Caller& caller) {
    dead_letters::ReplayRequest replay;
    bool dry_run = false;
    try {
        simdjson::dom::parser parser;
        const auto body = read_body(parser, request.body, {"filter", "limit", "rate", "dry_run", "to", "canary"});
        replay.filter = filter_of(body);
        replay.filter.state = "dead";
        if (body["limit"].error() == simdjson::SUCCESS &&
            (body["limit"].get(replay.limit) != simdjson::SUCCESS || replay.limit < 1)) {
            throw InvalidRequest("limit must be a positive integer");
        }
        if (body["rate"].error() == simdjson::SUCCESS &&
            (body["rate"].get(replay.rate) != simdjson::SUCCESS || !(replay.rate > 0))) {
            throw InvalidRequest("rate must be a positive number of jobs per second");
        }
        if (body["canary"].error() == simdjson::SUCCESS &&
            (body["canary"].get(replay.canary) != simdjson::SUCCESS || replay.canary < 1)) {
            throw InvalidRequest("canary must be a positive number of dead letters to replay first");
        }
        if (body["dry_run"].error() == simdjson::SUCCESS && body["dry_run"].get(dry_run) != simdjson::SUCCESS) {
            throw InvalidRequest("dry_run must be true or false");
        }
        if (body["to"].error() == simdjson::SUCCESS) {
            std::string_view to;
            if (body["to"].get(to) != simdjson::SUCCESS || !is_valid_job_type(to)) {
                throw InvalidRequest("to must be a job type such as payments.charge");
            }
            replay.to_type = std::string(to);
        }
    } catch (const std::invalid_argument& e) {
        auto response = error_response(400, e.what());
        co_return response;
    }
    replay.by = caller.source();
    replay.publish_timeout = publish_timeout_;
    // A replay would wait for the broker inside this request, holding its rows locked.
    if (!dry_run && (!publisher_.connected() || publisher_.blocked())) {
        auto response = error_response(
            503, publisher_.connected()
                     ? std::string("the broker blocks publishing (a resource alarm); nothing was replayed")
                     : fmt::format("the broker is not connected ({}); nothing was replayed", publisher_.last_error()));
        response.headers.emplace_back("Retry-After", "5");
        co_return response;
    }

    const auto matched = co_await dead_letters::count_replayable(pool_, replay);
    if (dry_run) {
        const auto rows = co_await dead_letters::stats(pool_, replay.filter);
        auto response = json_response(200, boost::json::object{{"dry_run", true},
                                                               {"filter", filter_json(replay.filter)},
                                                               {"matched", matched},
                                                               {"by_type_and_reason", counts_json(rows, 1, 2, 3)}});
        co_return response;
    }
    if (replay.rate > 0 && static_cast<double>(matched) / replay.rate > kMaxReplaySeconds) {
        auto response = error_response(
            400, fmt::format("{} dead letters at {} per second would take {:.0f} s, longer than a request may run "
                             "({:.0f} s): give a limit, or use conveyor dlq replay",
                             matched, replay.rate, static_cast<double>(matched) / replay.rate, kMaxReplaySeconds));
        co_return response;
    }
    spdlog::info("api: {} replays {} dead letters ({})", caller.name, matched,
                 boost::json::serialize(filter_json(replay.filter)));
    const auto started = std::chrono::steady_clock::now();
    dead_letters::ReplayHooks hooks;
    hooks.stop_requested = [this] { return stopping_.load(); };
    const auto result = co_await dead_letters::replay(pool_, publisher_, replay, hooks);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    boost::json::object summary{{"matched", result.matched}, {"replayed", result.replayed}, {"seconds", seconds}};
    unsigned status = 200;
    if (!result.failure.empty()) {
        spdlog::error("api: replay by {} stopped after {} of {}: {}", caller.name, result.replayed, result.matched,
                      result.failure);
        summary["error"] = fmt::format("stopped: {}; the rest are still dead letters", result.failure);
        status = 502;
    } else if (result.stopped) {
        summary["error"] = "the scheduler is shutting down; the rest are still dead letters";
        status = 503;
    }
    auto response = json_response(status, summary);
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::purge_dead_letters(const HttpRequest& request, const Caller& caller) {
    dead_letters::Filter filter;
    std::optional<std::int64_t> expected;
    try {
        simdjson::dom::parser parser;
        const auto body = read_body(parser, request.body, {"filter", "expected"});
        filter = filter_of(body);
        if (body["expected"].error() == simdjson::SUCCESS) {
            std::int64_t count = 0;
            if (body["expected"].get(count) != simdjson::SUCCESS || count < 0) {
                throw InvalidRequest("expected must be the number of dead letters you mean to delete");
            }
            expected = count;
        }
    } catch (const std::invalid_argument& e) {
        auto response = error_response(400, e.what());
        co_return response;
    }
    const auto source = caller.source();
    const auto purged = co_await dead_letters::purge(pool_, filter, source, expected);
    if (purged.refused) {
        auto response =
            error_response(409, fmt::format("{} dead letters match now, not the {} you confirmed; nothing was deleted",
                                            purged.deleted, *expected));
        co_return response;
    }
    spdlog::warn("api: {} purged {} dead letters ({})", caller.name, purged.deleted,
                 boost::json::serialize(filter_json(filter)));
    auto response = json_response(
        200, boost::json::object{{"deleted", purged.deleted},
                                 {"by_type_and_reason", counts_json(purged.by_type_and_reason, 0, 1, 2)}});
    co_return response;
}

}  // namespace conveyor::scheduler
