#include "conveyor/scheduler/authenticator.hpp"

#include <fmt/format.h>

#include "conveyor/core/config.hpp"
#include "conveyor/scheduler/settings.hpp"

namespace conveyor::scheduler {

Authenticator::Authenticator(std::vector<ApiToken> tokens, std::optional<jwt::Verifier> verifier)
    : tokens_(std::move(tokens)), verifier_(std::move(verifier)) {}

Authenticator::Outcome Authenticator::authenticate(std::string_view credential,
                                                   std::chrono::system_clock::time_point now) const {
    const auto refused = [](unsigned status, std::string reason) {
        return Outcome{std::nullopt, {status, std::move(reason)}, std::nullopt};
    };
    if (!jwt::looks_like_jwt(credential)) {
        if (const auto* token = find_token(tokens_, credential)) {
            return {Caller::of(*token), {}, std::nullopt};
        }
        return refused(401, "the token is not valid");
    }
    if (!verifier_) {
        return refused(401, "this server accepts no JSON Web Tokens (no --jwt-secret-file or --jwt-public-key-file)");
    }
    jwt::Claims claims;
    try {
        claims = verifier_->verify(credential, now);
    } catch (const jwt::Refused& e) {
        return refused(401, e.what());
    }
    const auto role = parse_role(claims.role);
    if (!role) {
        return refused(403, "the token's role claim must be viewer, operator or admin");
    }
    if (claims.subject.empty()) {
        return refused(401, "the token has no sub: the caller must be named, for the audit log");
    }
    Caller caller{.name = "user:" + claims.subject,
                  .role = role,
                  .can_enqueue = *role >= Role::operator_,
                  .rate_limit = std::nullopt};
    return {std::move(caller), {}, claims.expires_at};
}

Authenticator load_authenticator(const SchedulerSettings& settings) {
    std::vector<ApiToken> tokens;
    if (!settings.api_tokens_file.empty()) {
        tokens = load_api_tokens(settings.api_tokens_file);
    }
    std::optional<jwt::Verifier> verifier;
    const auto build = [&](jwt::Algorithm algorithm, std::string key, const std::string& path) {
        try {
            verifier.emplace(jwt::VerifierSettings{.algorithm = algorithm,
                                                   .key = std::move(key),
                                                   .audience = settings.jwt_audience,
                                                   .issuer = settings.jwt_issuer});
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(fmt::format("{}: {}", path, e.what()));
        }
    };
    if (!settings.jwt_secret_file.empty()) {
        build(jwt::Algorithm::hs256, jwt::read_secret_file(settings.jwt_secret_file), settings.jwt_secret_file);
    } else if (!settings.jwt_public_key_file.empty()) {
        build(jwt::Algorithm::rs256, read_config_file(settings.jwt_public_key_file, "JWT public key file"),
              settings.jwt_public_key_file);
    }
    return {std::move(tokens), std::move(verifier)};
}

}  // namespace conveyor::scheduler
