#include <fmt/format.h>
#include <simdjson.h>

#include <boost/json/array.hpp>

#include "api.hpp"
#include "api_json.hpp"
#include "conveyor/core/batches.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;

namespace {

/// A text field of a body, "" when absent. Throws InvalidRequest if it is not text.
std::string text_field(simdjson::dom::object body, std::string_view name) {
    simdjson::dom::element element;
    if (body[name].get(element) != simdjson::SUCCESS) {
        return {};
    }
    std::string_view text;
    if (element.get(text) != simdjson::SUCCESS) {
        throw InvalidRequest(fmt::format("{} must be a string", name));
    }
    return std::string(text);
}

/// POST /v1/batches: {"id"?, "description"?, "callback"?, "callback_payload"?}, every field optional.
batches::Opening opening_of(const std::string& body_text, const Caller& caller) {
    simdjson::dom::parser parser;
    const auto body = read_body(parser, body_text.empty() ? std::string("{}") : body_text,
                                {"id", "description", "callback", "callback_payload"});
    batches::Opening opening{.id = text_field(body, "id"),
                             .description = text_field(body, "description"),
                             .callback_type = text_field(body, "callback"),
                             .callback_payload = "{}",
                             .opened_by = caller.source()};
    simdjson::dom::element payload;
    if (body["callback_payload"].get(payload) == simdjson::SUCCESS) {
        if (!payload.is_object()) {
            throw InvalidRequest("callback_payload must be a JSON object");
        }
        opening.callback_payload = simdjson::minify(payload);
    }
    return opening;
}

/// POST /v1/batches/{id}/seal: {"expected"?: N}.
std::optional<std::int64_t> expected_of(const std::string& body_text) {
    simdjson::dom::parser parser;
    const auto body = read_body(parser, body_text.empty() ? std::string("{}") : body_text, {"expected"});
    simdjson::dom::element element;
    if (body["expected"].get(element) != simdjson::SUCCESS) {
        return std::nullopt;
    }
    std::int64_t expected = 0;
    if (element.get(expected) != simdjson::SUCCESS || expected < 0 || expected > 2'000'000'000) {
        throw InvalidRequest("expected must be a whole number from 0 to 2000000000");
    }
    return expected;
}

/// A refusal as its status: 404 for an unknown batch, 409 for one whose state does not allow it, else 400.
HttpResponse refusal(const std::exception_ptr& refused) {
    try {
        std::rethrow_exception(refused);
    } catch (const batches::NoSuchBatch& e) {
        return error_response(404, e.what());
    } catch (const batches::BatchConflict& e) {
        return error_response(409, e.what());
    } catch (const std::invalid_argument& e) {
        return error_response(400, e.what());
    }
}

}  // namespace

asio::awaitable<HttpResponse> EnqueueApi::open_batch(const HttpRequest& request, const Caller& caller) {
    std::exception_ptr refused;
    std::string id;
    try {
        const auto opening = opening_of(request.body, caller);
        id = co_await batches::open(pool_, opening);
    } catch (const std::invalid_argument&) {
        refused = std::current_exception();
    }
    if (refused) {
        co_return refusal(refused);
    }
    spdlog::info("api: batch {} opened by {}", id, caller.name);
    const auto batch = co_await batches::find(pool_, id);
    auto response = json_response(201, batches::to_json(*batch));
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::show_batch(const HttpRequest& request, const Caller& /*caller*/) {
    const auto id = std::string(request.param("id").value_or(""));
    const auto batch = co_await batches::find(pool_, id);
    if (!batch) {
        auto response = error_response(404, fmt::format("no batch {}", id));
        co_return response;
    }
    auto response = json_response(200, batches::to_json(*batch));
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::list_batches(const HttpRequest& request, const Caller& /*caller*/) {
    std::int64_t limit = 0;
    try {
        limit = listing_limit(request);
    } catch (const std::invalid_argument& e) {
        auto response = error_response(400, e.what());
        co_return response;
    }
    const auto listed = co_await batches::recent(pool_, limit);
    boost::json::array shown;
    for (const auto& batch : listed) {
        shown.emplace_back(batches::to_json(batch));
    }
    auto response = json_response(200, boost::json::object{{"batches", std::move(shown)}});
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::seal_batch(const HttpRequest& request, const Caller& caller) {
    const auto id = std::string(request.param("id").value_or(""));
    std::exception_ptr refused;
    try {
        const auto expected = expected_of(request.body);
        co_await batches::seal(pool_, id, expected);
    } catch (const std::invalid_argument&) {
        refused = std::current_exception();
    }
    if (refused) {
        co_return refusal(refused);
    }
    spdlog::info("api: batch {} sealed by {}", id, caller.name);
    const auto batch = co_await batches::find(pool_, id);
    auto response = json_response(200, batches::to_json(*batch));
    co_return response;
}

}  // namespace conveyor::scheduler
