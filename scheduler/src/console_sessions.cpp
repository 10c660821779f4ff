#include "console_sessions.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <array>
#include <stdexcept>

#include "conveyor/core/base64url.hpp"

namespace conveyor::scheduler::console_sessions {
namespace asio = boost::asio;
using Clock = std::chrono::system_clock;

namespace {

std::string random_token() {
    std::array<unsigned char, 32> bytes{};
    if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
        throw std::runtime_error("OpenSSL's random generator failed");
    }
    return base64url::encode(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

std::string sha256_literal(std::string_view cookie) {
    std::array<unsigned char, SHA256_DIGEST_LENGTH> digest{};
    SHA256(reinterpret_cast<const unsigned char*>(cookie.data()), cookie.size(), digest.data());
    return pg::bytea_literal(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
}

std::int64_t epoch_seconds(Clock::time_point at) {
    return std::chrono::duration_cast<std::chrono::seconds>(at.time_since_epoch()).count();
}

}  // namespace

asio::awaitable<std::pair<std::string, Session>> open(pg::Pool& pool, const Caller& caller,
                                                      Clock::time_point expires_at) {
    auto cookie = random_token();
    Session session{caller, random_token(), expires_at};
    co_await pool.query(
        "INSERT INTO conveyor.console_sessions (id_sha256, caller, role, can_enqueue, csrf_token, expires_at) "
        "VALUES ($1::bytea, $2, $3, $4::boolean, $5, to_timestamp($6::bigint))",
        sha256_literal(cookie), caller.name, std::string(role_name(caller.role.value_or(Role::viewer))),
        std::string(caller.can_enqueue ? "true" : "false"), session.csrf_token, epoch_seconds(expires_at));
    co_return std::pair{std::move(cookie), std::move(session)};
}

asio::awaitable<std::optional<Session>> find(pg::Pool& pool, std::string_view cookie) {
    if (cookie.empty() || cookie.size() > 64) {
        co_return std::nullopt;
    }
    const auto rows = co_await pool.query(
        "SELECT caller, role, can_enqueue, csrf_token, extract(epoch FROM expires_at)::bigint "
        "FROM conveyor.console_sessions WHERE id_sha256 = $1::bytea AND expires_at > now()",
        sha256_literal(cookie));
    if (rows.rows() == 0) {
        co_return std::nullopt;
    }
    Session session;
    session.caller.name = rows.text(0, 0);
    session.caller.role = parse_role(rows.text(0, 1));
    session.caller.can_enqueue = rows.text(0, 2) == "t";
    session.csrf_token = rows.text(0, 3);
    session.expires_at = Clock::time_point(std::chrono::seconds(rows.integer(0, 4)));
    co_return session;
}

asio::awaitable<void> close(pg::Pool& pool, std::string_view cookie) {
    co_await pool.query("DELETE FROM conveyor.console_sessions WHERE id_sha256 = $1::bytea", sha256_literal(cookie));
}

asio::awaitable<std::int64_t> prune(pg::Pool& pool) {
    const auto rows = co_await pool.query(
        "WITH gone AS (DELETE FROM conveyor.console_sessions WHERE expires_at <= now() RETURNING 1) "
        "SELECT count(*) FROM gone");
    co_return rows.integer(0, 0);
}

std::optional<std::string_view> cookie_value(std::string_view cookie_header) {
    while (!cookie_header.empty()) {
        const auto end = cookie_header.find(';');
        auto pair = cookie_header.substr(0, end);
        cookie_header = end == std::string_view::npos ? std::string_view() : cookie_header.substr(end + 1);
        while (!pair.empty() && pair.front() == ' ') {
            pair.remove_prefix(1);
        }
        if (pair.starts_with(kCookie) && pair.size() > kCookie.size() && pair[kCookie.size()] == '=') {
            return pair.substr(kCookie.size() + 1);
        }
    }
    return std::nullopt;
}

bool csrf_matches(const Session& session, std::string_view sent) {
    return sent.size() == session.csrf_token.size() &&
           CRYPTO_memcmp(sent.data(), session.csrf_token.data(), sent.size()) == 0;
}

}  // namespace conveyor::scheduler::console_sessions
