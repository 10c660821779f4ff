#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/jwt.hpp"
#include "conveyor/scheduler/api_tokens.hpp"

namespace conveyor::scheduler {

struct SchedulerSettings;

/// Who a bearer credential stands for: a static token of the tokens file (compared by SHA-256, in constant time),
/// or a JSON Web Token verified with the configured key, whose `sub` names the caller ("user:<sub>") and whose
/// `role` claim is its role.
class Authenticator {
  public:
    Authenticator(std::vector<ApiToken> tokens, std::optional<jwt::Verifier> verifier);

    /// A credential that names no caller: why, and whether it is 401 (not believed) or 403 (believed, but with no
    /// role this server knows).
    struct Refusal {
        unsigned status = 401;
        std::string reason;
    };
    struct Outcome {
        std::optional<Caller> caller;
        Refusal refusal;
        /// When the credential stops being valid: a JWT's exp; nothing for a static token.
        std::optional<std::chrono::system_clock::time_point> expires_at;
    };
    [[nodiscard]] Outcome authenticate(std::string_view credential, std::chrono::system_clock::time_point now) const;

    /// Whether any credential can pass: tokens are configured, or a JWT key.
    [[nodiscard]] bool configured() const noexcept { return !tokens_.empty() || verifier_.has_value(); }
    [[nodiscard]] bool takes_jwts() const noexcept { return verifier_.has_value(); }

  private:
    std::vector<ApiToken> tokens_;
    std::optional<jwt::Verifier> verifier_;
};

/// The authenticator the settings describe: the tokens file, and a JWT key (--jwt-secret-file for HS256 or
/// --jwt-public-key-file for RS256, with --jwt-audience and --jwt-issuer). Throws std::invalid_argument naming the
/// file and what is wrong.
[[nodiscard]] Authenticator load_authenticator(const SchedulerSettings& settings);

}  // namespace conveyor::scheduler
