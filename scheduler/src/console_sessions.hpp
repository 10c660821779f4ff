#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "conveyor/core/pg.hpp"
#include "conveyor/scheduler/api_tokens.hpp"

/// The console's sessions in conveyor.console_sessions: a browser signs in once with a bearer token and then holds
/// an HttpOnly cookie naming its session. Only the cookie's SHA-256 is stored, so every replica accepts the session
/// and a copy of the table opens none.
namespace conveyor::scheduler::console_sessions {

/// The cookie's name.
inline constexpr std::string_view kCookie = "conveyor_session";
/// A session lasts at most this long, or until its token expires if that is sooner.
inline constexpr auto kMaxLifetime = std::chrono::hours(12);

struct Session {
    Caller caller;
    /// The console sends it back in X-CSRF-Token with every change: another site can make the browser send the
    /// cookie, never read this.
    std::string csrf_token;
    std::chrono::system_clock::time_point expires_at;
};

/// Opens a session for `caller` until `expires_at`; returns the cookie's value (256 random bits) and the session.
[[nodiscard]] boost::asio::awaitable<std::pair<std::string, Session>> open(
    pg::Pool& pool, const Caller& caller, std::chrono::system_clock::time_point expires_at);

/// The live session a cookie value names, if any.
[[nodiscard]] boost::asio::awaitable<std::optional<Session>> find(pg::Pool& pool, std::string_view cookie);

/// Ends the session a cookie value names (nothing if there is none).
boost::asio::awaitable<void> close(pg::Pool& pool, std::string_view cookie);

/// Deletes expired sessions; returns how many.
[[nodiscard]] boost::asio::awaitable<std::int64_t> prune(pg::Pool& pool);

/// The value of the session cookie in a Cookie header ("a=1; conveyor_session=…"), if it has one.
[[nodiscard]] std::optional<std::string_view> cookie_value(std::string_view cookie_header);

/// Whether a CSRF token sent with a request is the session's (compared in constant time).
[[nodiscard]] bool csrf_matches(const Session& session, std::string_view sent);

}  // namespace conveyor::scheduler::console_sessions
