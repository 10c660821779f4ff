// The console's sign-in: POST /console/api/session trades a bearer token for a session cookie, GET tells the
// console who is signed in (and its CSRF token), DELETE signs out.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "api.hpp"
#include "api_json.hpp"
#include "console_sessions.hpp"
#include "conveyor/core/config.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;
using Clock = std::chrono::system_clock;

namespace {

boost::json::object session_json(const console_sessions::Session& session) {
    return {{"user", session.caller.name},
            {"role", role_name(session.caller.role.value_or(Role::viewer))},
            {"can_enqueue", session.caller.can_enqueue},
            {"csrf_token", session.csrf_token},
            {"expires_at", utc_timestamp(session.expires_at)}};
}

std::string session_cookie(std::string_view value, std::chrono::seconds max_age, bool secure) {
    return fmt::format("{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}", console_sessions::kCookie, value,
                       max_age.count(), secure ? "; Secure" : "");
}

/// The live session a request's cookie names, with the cookie's value.
struct SignedIn {
    std::string_view cookie;
    console_sessions::Session session;
};

asio::awaitable<std::optional<SignedIn>> signed_in_session(pg::Pool& pool, const HttpRequest& request) {
    const auto cookie = console_sessions::cookie_value(request.header("Cookie").value_or(""));
    if (!cookie) {
        co_return std::nullopt;
    }
    auto session = co_await console_sessions::find(pool, *cookie);
    if (!session) {
        co_return std::nullopt;
    }
    co_return SignedIn{*cookie, std::move(*session)};
}

HttpResponse no_store(HttpResponse response) {
    response.headers.emplace_back("Cache-Control", "no-store");
    return response;
}

}  // namespace

asio::awaitable<HttpResponse> EnqueueApi::sign_in(const HttpRequest& request, const Caller& /*nobody*/) {
    std::string credential;
    try {
        simdjson::dom::parser parser;
        const auto body = read_body(parser, request.body, {"token"});
        std::string_view text;
        if (body["token"].get(text) != simdjson::SUCCESS || text.empty()) {
            throw InvalidRequest(R"(the body is {"token": "<a JSON Web Token or an API token>"})");
        }
        credential = std::string(text);
    } catch (const InvalidRequest& e) {
        co_return no_store(error_response(400, e.what()));
    }
    const auto now = Clock::now();
    auto outcome = authenticator_.authenticate(credential, now);
    if (!outcome.caller) {
        if (const auto held_back = refusal_log_.admit()) {
            spdlog::warn("console: sign-in refused from {}: {}{}", request.remote_address, outcome.refusal.reason,
                         LogThrottle::held_back_note(*held_back));
        }
        co_return no_store(error_response(outcome.refusal.status, outcome.refusal.reason));
    }
    if (!outcome.caller->role) {
        co_return no_store(error_response(
            403, fmt::format("{} has no role: the console needs a viewer, operator or admin", outcome.caller->name)));
    }
    const auto expires_at = std::min(now + console_sessions::kMaxLifetime,
                                     outcome.expires_at.value_or(now + console_sessions::kMaxLifetime));
    auto [cookie, session] = co_await console_sessions::open(pool_, *outcome.caller, expires_at);
    spdlog::info("console: {} signed in as {} from {}", session.caller.name,
                 role_name(session.caller.role.value_or(Role::viewer)), request.remote_address);
    auto response = no_store(json_response(201, session_json(session)));
    response.headers.emplace_back(
        "Set-Cookie",
        session_cookie(cookie, std::chrono::duration_cast<std::chrono::seconds>(expires_at - now), secure_cookies_));
    co_return response;
}

asio::awaitable<HttpResponse> EnqueueApi::show_session(const HttpRequest& request, const Caller& /*nobody*/) {
    const auto signed_in = co_await signed_in_session(pool_, request);
    if (!signed_in) {
        co_return no_store(error_response(401, "not signed in"));
    }
    co_return no_store(json_response(200, session_json(signed_in->session)));
}

asio::awaitable<HttpResponse> EnqueueApi::sign_out(const HttpRequest& request, const Caller& /*nobody*/) {
    const auto signed_in = co_await signed_in_session(pool_, request);
    if (!signed_in) {
        co_return no_store(error_response(401, "not signed in"));
    }
    if (!console_sessions::csrf_matches(signed_in->session, request.header("X-CSRF-Token").value_or(""))) {
        co_return no_store(error_response(403, "signing out needs the session's X-CSRF-Token header"));
    }
    co_await console_sessions::close(pool_, signed_in->cookie);
    spdlog::info("console: {} signed out", signed_in->session.caller.name);
    auto response = no_store(json_response(200, boost::json::object{{"signed_out", true}}));
    response.headers.emplace_back("Set-Cookie", session_cookie("", std::chrono::seconds(0), secure_cookies_));
    co_return response;
}

}  // namespace conveyor::scheduler
