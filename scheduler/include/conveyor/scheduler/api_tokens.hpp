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

/// One entry of CONVEYOR_API_TOKENS_FILE. The file holds each token's SHA-256, never the token, so it can be a
/// mounted secret that leaks nothing usable.
struct ApiToken {
    std::string name;
    std::array<unsigned char, 32> sha256{};
    std::set<Scope> scopes;
    /// Requests per second this token may make (a bucket as deep as one second of them); nullopt takes the
    /// scheduler's --api-rate-limit.
    std::optional<double> rate_limit;

    [[nodiscard]] bool allows(Scope scope) const { return scopes.contains(Scope::admin) || scopes.contains(scope); }
};

/// Parses `tokens: [{name, sha256, scopes: [enqueue, admin], rate_limit?}]`; throws std::invalid_argument naming the
/// origin, line and entry, and what is wrong.
[[nodiscard]] std::vector<ApiToken> parse_api_tokens(std::string_view yaml, std::string_view origin);
[[nodiscard]] std::vector<ApiToken> load_api_tokens(const std::string& path);

/// The token a bearer secret belongs to, or null. The secret's SHA-256 is compared with every entry in constant
/// time, so neither the answer's timing nor which entry matched tells an attacker anything.
[[nodiscard]] const ApiToken* find_token(const std::vector<ApiToken>& tokens, std::string_view secret);

/// Per-token rate limits. Thread-safe.
class RateLimiter {
  public:
    explicit RateLimiter(double default_rate) : default_rate_(default_rate) {}

    /// Takes one request from the token's bucket (as deep as one second of its rate); if it is empty, how long until
    /// one is available.
    [[nodiscard]] std::optional<std::chrono::milliseconds> try_acquire(const ApiToken& token);

  private:
    double default_rate_;
    TokenBuckets buckets_;
};

}  // namespace conveyor::scheduler
