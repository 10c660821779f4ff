#pragma once

#include <array>
#include <chrono>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/rate_limit.hpp"

namespace conveyor::scheduler {

/// What a token may do: `enqueue` jobs (POST /v1/jobs), or `admin` (everything, including listing and cancelling
/// scheduled jobs).
enum class Scope { enqueue, admin };

/// What a caller may see and do, each role what the one before it may and more: a `viewer` reads everything, an
/// `operator` also cancels, retries, pauses, replays and enqueues, an `admin` also purges and sets flow limits.
/// (`operator_`: operator is a C++ keyword.)
enum class Role { viewer, operator_, admin };
[[nodiscard]] std::optional<Role> parse_role(std::string_view name);
[[nodiscard]] std::string_view role_name(Role role);

/// What a route needs of its caller: `none` (no credentials: the console's sign-in), an `authenticated` caller, one
/// that may `enqueue`, or a role that may `view`, `operate` or `administer`.
enum class Permission { none, authenticated, enqueue, view, operate, administer };

/// One entry of CONVEYOR_API_TOKENS_FILE. The file holds each token's SHA-256, never the token, so it can be a
/// mounted secret that leaks nothing usable.
struct ApiToken {
    std::string name;
    std::array<unsigned char, 32> sha256{};
    std::set<Scope> scopes;
    /// The role it has besides its scopes (the admin scope is the admin role).
    std::optional<Role> role;
    /// Requests per second this token may make (a bucket as deep as one second of them); nullopt takes the
    /// scheduler's --api-rate-limit.
    std::optional<double> rate_limit;

    [[nodiscard]] bool allows(Scope scope) const { return scopes.contains(Scope::admin) || scopes.contains(scope); }
};

/// Who makes a request, once authenticated: a static token of the tokens file, or the subject of a JSON Web Token.
struct Caller {
    /// The token's name, or "user:<sub>" for a JWT: what logs, audit records and key namespaces name.
    std::string name;
    std::optional<Role> role;
    bool can_enqueue = false;
    /// Requests per second it may make; nullopt takes the scheduler's --api-rate-limit.
    std::optional<double> rate_limit;

    [[nodiscard]] static Caller of(const ApiToken& token);
    [[nodiscard]] bool may(Permission permission) const;
    /// The namespace of its idempotency keys and the name its changes are recorded under: "api:<name>".
    [[nodiscard]] std::string source() const { return "api:" + name; }
};

/// Parses `tokens: [{name, sha256, scopes: [enqueue, admin], role?, rate_limit?}]` (scopes, role or both); throws
/// std::invalid_argument naming the origin, line and entry, and what is wrong.
[[nodiscard]] std::vector<ApiToken> parse_api_tokens(std::string_view yaml, std::string_view origin);
[[nodiscard]] std::vector<ApiToken> load_api_tokens(const std::string& path);

/// The token a bearer secret belongs to, or null. The secret's SHA-256 is compared with every entry in constant
/// time, so neither the answer's timing nor which entry matched tells an attacker anything.
[[nodiscard]] const ApiToken* find_token(const std::vector<ApiToken>& tokens, std::string_view secret);

/// Per-token rate limits. Thread-safe.
class RateLimiter {
  public:
    explicit RateLimiter(double default_rate) : default_rate_(default_rate) {}

    /// Takes one request from the caller's bucket (as deep as one second of its rate); if it is empty, how long until
    /// one is available.
    [[nodiscard]] std::optional<std::chrono::milliseconds> try_acquire(const Caller& caller);

  private:
    double default_rate_;
    TokenBuckets buckets_;
};

}  // namespace conveyor::scheduler
