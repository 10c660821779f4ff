#include <fmt/format.h>

#include <boost/json/serialize.hpp>
#include <iostream>

#include "commands.hpp"
#include "conveyor/cli/cli.hpp"
#include "conveyor/core/config.hpp"
#include "conveyor/core/jwt.hpp"

namespace conveyor::cli {

namespace {

// Longer-lived tokens belong to services, which have static API tokens; a person signs in again.
constexpr auto kMaxTtl = std::chrono::days(30);

}  // namespace

int sign_token(const TokenOptions& options) {
    const auto ttl = parse_duration(options.ttl);
    if (ttl <= std::chrono::seconds(0) || ttl > kMaxTtl) {
        std::cerr << "conveyor token: --ttl must be more than 0 and at most 30 days\n";
        return kUsage;
    }
    const auto now = std::chrono::system_clock::now();
    const auto expires_at = std::chrono::floor<std::chrono::seconds>(now + ttl);
    boost::json::object claims{
        {"sub", options.subject},
        {"role", options.role},
        {"aud", options.audience},
        {"iat", std::chrono::floor<std::chrono::seconds>(now).time_since_epoch().count()},
        {"exp", expires_at.time_since_epoch().count()},
    };
    if (!options.issuer.empty()) {
        claims["iss"] = options.issuer;
    }
    const auto token = jwt::sign_hs256(claims, jwt::read_secret_file(options.secret_file));
    if (options.json) {
        std::cout << boost::json::serialize(
                         boost::json::object{{"token", token}, {"expires_at", utc_timestamp(expires_at)}})
                  << '\n';
    } else {
        std::cout << token << '\n';
    }
    return kOk;
}

}  // namespace conveyor::cli
