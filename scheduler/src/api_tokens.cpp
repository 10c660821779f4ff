#include "conveyor/scheduler/api_tokens.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>

#include "conveyor/core/config.hpp"

namespace conveyor::scheduler {

namespace {

// One request in about 17 minutes: slower limits are a mistake, and would overflow Retry-After.
constexpr double kMinRate = 0.001;

std::optional<std::array<unsigned char, 32>> parse_hex_digest(std::string_view hex) {
    std::array<unsigned char, 32> digest{};
    if (hex.size() != 64) {
        return std::nullopt;
    }
    for (std::size_t i = 0; i < digest.size(); ++i) {
        const auto* begin = hex.data() + 2 * i;
        const auto [rest, error] = std::from_chars(begin, begin + 2, digest[i], 16);
        if (error != std::errc{} || rest != begin + 2) {
            return std::nullopt;
        }
    }
    return digest;
}

ApiToken parse_token(const YAML::Node& entry, std::string_view origin, std::size_t index) {
    ApiToken token;
    const auto where = fmt::format("{}:{}", origin, entry.Mark().line + 1);
    auto fail = [&](std::string_view what) {
        const auto label =
            token.name.empty() ? fmt::format("token #{}", index + 1) : fmt::format("token '{}'", token.name);
        throw std::invalid_argument(fmt::format("{}: {}: {}", where, label, what));
    };
    if (!entry.IsMap()) {
        fail("expected a mapping with name, sha256, scopes");
    }
    if (!entry["name"] || !entry["name"].IsScalar() || entry["name"].Scalar().empty()) {
        fail("'name' is required");
    }
    token.name = entry["name"].Scalar();
    for (const auto& key : entry) {
        const auto text = key.first.as<std::string>();
        if (text != "name" && text != "sha256" && text != "scopes" && text != "role" && text != "rate_limit") {
            fail(fmt::format("unknown key '{}' (known: name, sha256, scopes, role, rate_limit)", text));
        }
    }
    if (!entry["sha256"] || !entry["sha256"].IsScalar()) {
        fail("'sha256' is required: the token's SHA-256 in hex (e.g. printf %s \"$TOKEN\" | sha256sum)");
    }
    auto hex = entry["sha256"].Scalar();
    std::transform(hex.begin(), hex.end(), hex.begin(), [](unsigned char c) { return std::tolower(c); });
    const auto digest = parse_hex_digest(hex);
    if (!digest) {
        fail("'sha256' must be 64 hexadecimal digits");
    }
    token.sha256 = *digest;
    if (const auto role = entry["role"]) {
        token.role = role.IsScalar() ? parse_role(role.Scalar()) : std::nullopt;
        if (!token.role) {
            fail("'role' must be viewer, operator or admin");
        }
    }
    const auto scopes = entry["scopes"];
    if (!scopes && token.role) {
        return token;
    }
    if (!scopes || !scopes.IsSequence() || scopes.size() == 0) {
        fail("'scopes' must list enqueue and/or admin (or give a role)");
    }
    for (const auto& scope : scopes) {
        const auto text = scope.IsScalar() ? scope.Scalar() : std::string();
        if (text == "enqueue") {
            token.scopes.insert(Scope::enqueue);
        } else if (text == "admin") {
            token.scopes.insert(Scope::admin);
        } else {
            fail(fmt::format("unknown scope '{}' (known: enqueue, admin)", text));
        }
    }
    if (const auto limit = entry["rate_limit"]) {
        double rate = 0;
        const auto& text = limit.Scalar();
        const auto [rest, error] = std::from_chars(text.data(), text.data() + text.size(), rate);
        if (error != std::errc{} || rest != text.data() + text.size() || !(rate >= kMinRate)) {
            fail(fmt::format("'rate_limit' must be at least {} requests per second, not '{}'", kMinRate, text));
        }
        token.rate_limit = rate;
    }
    return token;
}

}  // namespace

std::vector<ApiToken> parse_api_tokens(std::string_view yaml, std::string_view origin) {
    YAML::Node document;
    try {
        document = YAML::Load(std::string(yaml));
    } catch (const YAML::Exception& e) {
        throw std::invalid_argument(fmt::format("{}:{}: not valid YAML: {}", origin, e.mark.line + 1, e.msg));
    }
    if (!document.IsMap() || !document["tokens"] || !document["tokens"].IsSequence()) {
        throw std::invalid_argument(fmt::format("{}: expected a top-level 'tokens:' list", origin));
    }
    std::vector<ApiToken> tokens;
    const auto list = document["tokens"];
    for (std::size_t index = 0; index < list.size(); ++index) {
        auto token = parse_token(list[index], origin, index);
        for (const auto& other : tokens) {
            if (other.name == token.name || other.sha256 == token.sha256) {
                throw std::invalid_argument(fmt::format("{}:{}: token '{}' repeats the name or the hash of '{}'",
                                                        origin, list[index].Mark().line + 1, token.name, other.name));
            }
        }
        tokens.push_back(std::move(token));
    }
    return tokens;
}

std::vector<ApiToken> load_api_tokens(const std::string& path) {
    return parse_api_tokens(read_config_file(path, "API tokens file"), path);
}

const ApiToken* find_token(const std::vector<ApiToken>& tokens, std::string_view secret) {
    std::array<unsigned char, 32> digest{};
    SHA256(reinterpret_cast<const unsigned char*>(secret.data()), secret.size(), digest.data());
    const ApiToken* found = nullptr;
    for (const auto& token : tokens) {
        if (CRYPTO_memcmp(digest.data(), token.sha256.data(), digest.size()) == 0) {
            found = &token;
        }
    }
    return found;
}

std::optional<std::chrono::milliseconds> RateLimiter::try_acquire(const Caller& caller) {
    const double rate = caller.rate_limit.value_or(default_rate_);
    return buckets_.try_acquire(caller.name, rate, std::max(rate, 1.0));
}

std::optional<Role> parse_role(std::string_view name) {
    if (name == "viewer") {
        return Role::viewer;
    }
    if (name == "operator") {
        return Role::operator_;
    }
    if (name == "admin") {
        return Role::admin;
    }
    return std::nullopt;
}

std::string_view role_name(Role role) {
    switch (role) {
        case Role::viewer:
            return "viewer";
        case Role::operator_:
            return "operator";
        case Role::admin:
            return "admin";
    }
    return "viewer";
}

Caller Caller::of(const ApiToken& token) {
    Caller caller{.name = token.name, .role = token.role, .rate_limit = token.rate_limit};
    if (token.scopes.contains(Scope::admin)) {
        caller.role = Role::admin;
    }
    caller.can_enqueue = token.scopes.contains(Scope::enqueue) || (caller.role && *caller.role >= Role::operator_);
    return caller;
}

bool Caller::may(Permission permission) const {
    switch (permission) {
        case Permission::none:
            return true;
        case Permission::authenticated:
            return can_enqueue || role.has_value();
        case Permission::enqueue:
            return can_enqueue;
        case Permission::view:
            return role.has_value();
        case Permission::operate:
            return role && *role >= Role::operator_;
        case Permission::administer:
            return role == Role::admin;
    }
    return false;
}

}  // namespace conveyor::scheduler
