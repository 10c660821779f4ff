#include "conveyor/core/jwt.hpp"

#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <algorithm>
#include <array>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <cmath>
#include <optional>

#include "conveyor/core/base64url.hpp"
#include "conveyor/core/config.hpp"

namespace conveyor::jwt {

namespace {

using Clock = std::chrono::system_clock;

std::array<unsigned char, 32> hmac_sha256(std::string_view secret, std::string_view data) {
    std::array<unsigned char, 32> digest{};
    unsigned length = 0;
    HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
         reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest.data(), &length);
    return digest;
}

/// A part of the token as the JSON object it must be.
boost::json::object decode_part(std::string_view part, std::string_view name) {
    const auto bytes = base64url::decode(part);
    if (!bytes) {
        throw Refused(fmt::format("the token's {} is not base64url", name));
    }
    boost::system::error_code error;
    auto value = boost::json::parse(*bytes, error);
    if (error || !value.is_object()) {
        throw Refused(fmt::format("the token's {} is not a JSON object", name));
    }
    return std::move(value.as_object());
}

/// A NumericDate claim (RFC 7519 §2: seconds since the epoch), if present; refused if present and not a number.
std::optional<Clock::time_point> date_claim(const boost::json::object& claims, std::string_view name) {
    const auto* value = claims.if_contains(name);
    if (value == nullptr) {
        return std::nullopt;
    }
    if (!value->is_number()) {
        throw Refused(fmt::format("the token's {} is not a number of seconds", name));
    }
    const double seconds = value->to_number<double>();
    if (!std::isfinite(seconds) || std::abs(seconds) > 1e11) {
        throw Refused(fmt::format("the token's {} is out of range", name));
    }
    return Clock::time_point(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)));
}

std::string text_claim(const boost::json::object& claims, std::string_view name) {
    const auto* value = claims.if_contains(name);
    return value != nullptr && value->is_string() ? std::string(value->as_string()) : std::string();
}

bool names_audience(const boost::json::object& claims, std::string_view audience) {
    const auto* aud = claims.if_contains("aud");
    if (aud == nullptr) {
        return false;
    }
    if (aud->is_string()) {
        return aud->as_string() == audience;
    }
    if (!aud->is_array()) {
        return false;
    }
    return std::any_of(aud->as_array().begin(), aud->as_array().end(),
                       [&](const auto& entry) { return entry.is_string() && entry.as_string() == audience; });
}

std::string ago(Clock::duration late) {
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(late).count();
    return seconds < 120 ? fmt::format("{} s", seconds) : fmt::format("{} min", seconds / 60);
}

}  // namespace

struct Verifier::PublicKey {
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key{nullptr, &EVP_PKEY_free};
};

Verifier::Verifier(VerifierSettings settings) : settings_(std::move(settings)), public_key_(new PublicKey) {
    if (settings_.algorithm == Algorithm::hs256) {
        if (settings_.key.size() < kMinSecretBytes) {
            throw std::invalid_argument(fmt::format("an HS256 secret must be at least {} bytes, not {}",
                                                    kMinSecretBytes, settings_.key.size()));
        }
        return;
    }
    const std::unique_ptr<BIO, decltype(&BIO_free)> pem(
        BIO_new_mem_buf(settings_.key.data(), static_cast<int>(settings_.key.size())), &BIO_free);
    public_key_->key.reset(PEM_read_bio_PUBKEY(pem.get(), nullptr, nullptr, nullptr));
    if (!public_key_->key) {
        throw std::invalid_argument("the RS256 key is not a PEM public key (-----BEGIN PUBLIC KEY-----)");
    }
    if (EVP_PKEY_get_base_id(public_key_->key.get()) != EVP_PKEY_RSA) {
        throw std::invalid_argument("the RS256 key is not an RSA key");
    }
    if (EVP_PKEY_get_bits(public_key_->key.get()) < 2048) {
        throw std::invalid_argument(fmt::format("the RS256 key has {} bits; at least 2048 are needed",
                                                EVP_PKEY_get_bits(public_key_->key.get())));
    }
}

Verifier::~Verifier() = default;
Verifier::Verifier(Verifier&&) noexcept = default;
Verifier& Verifier::operator=(Verifier&&) noexcept = default;

Claims Verifier::verify(std::string_view token, Clock::time_point now) const {
    if (token.size() > kMaxTokenBytes || !looks_like_jwt(token)) {
        throw Refused("not a JSON Web Token (header.payload.signature)");
    }
    const auto first_dot = token.find('.');
    const auto second_dot = token.find('.', first_dot + 1);
    const auto header = decode_part(token.substr(0, first_dot), "header");
    const auto algorithm = text_claim(header, "alg");
    const std::string_view expected = settings_.algorithm == Algorithm::hs256 ? "HS256" : "RS256";
    if (algorithm != expected) {
        throw Refused(algorithm == "none" || algorithm.empty()
                          ? std::string("an unsigned token (alg none) is never accepted")
                          : fmt::format("the token is signed with {}; this server accepts {} only",
                                        algorithm.substr(0, 16), expected));
    }
    if (header.contains("crit")) {
        throw Refused("the token names critical header extensions this server does not know");
    }
    const auto signature = base64url::decode(token.substr(second_dot + 1));
    if (!signature) {
        throw Refused("the token's signature is not base64url");
    }
    check_signature(token.substr(0, second_dot), *signature);
    return check_claims(decode_part(token.substr(first_dot + 1, second_dot - first_dot - 1), "payload"), now);
}

void Verifier::check_signature(std::string_view signed_part, std::string_view signature) const {
    bool valid = false;
    if (settings_.algorithm == Algorithm::hs256) {
        const auto digest = hmac_sha256(settings_.key, signed_part);
        valid = signature.size() == digest.size() && CRYPTO_memcmp(signature.data(), digest.data(), digest.size()) == 0;
    } else {
        const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
        valid =
            context &&
            EVP_DigestVerifyInit(context.get(), nullptr, EVP_sha256(), nullptr, public_key_->key.get()) == 1 &&
            EVP_DigestVerify(context.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                             reinterpret_cast<const unsigned char*>(signed_part.data()), signed_part.size()) == 1;
    }
    if (!valid) {
        throw Refused("the token's signature does not verify: it was signed with another key, or altered");
    }
}

Claims Verifier::check_claims(boost::json::object payload, Clock::time_point now) const {
    const auto expires_at = date_claim(payload, "exp");
    if (!expires_at) {
        throw Refused("the token has no exp: tokens that never expire are not accepted");
    }
    if (now > *expires_at + settings_.leeway) {
        throw Refused(fmt::format("the token expired {} ago", ago(now - *expires_at)));
    }
    if (const auto not_before = date_claim(payload, "nbf"); not_before && now + settings_.leeway < *not_before) {
        throw Refused(fmt::format("the token is not valid for another {}", ago(*not_before - now)));
    }
    if (const auto issued_at = date_claim(payload, "iat"); issued_at && now + settings_.leeway < *issued_at) {
        throw Refused("the token was issued in the future: check the clocks");
    }
    if (!names_audience(payload, settings_.audience)) {
        throw Refused(fmt::format("the token's aud does not name {}", settings_.audience));
    }
    if (!settings_.issuer.empty() && text_claim(payload, "iss") != settings_.issuer) {
        throw Refused(fmt::format("the token's iss is not {}", settings_.issuer));
    }
    Claims claims;
    claims.subject = text_claim(payload, "sub");
    claims.role = text_claim(payload, "role");
    claims.expires_at = *expires_at;
    claims.all = std::move(payload);
    return claims;
}

std::string sign_hs256(const boost::json::object& claims, std::string_view secret) {
    if (secret.size() < kMinSecretBytes) {
        throw std::invalid_argument(
            fmt::format("an HS256 secret must be at least {} bytes, not {}", kMinSecretBytes, secret.size()));
    }
    const auto signed_part =
        base64url::encode(R"({"alg":"HS256","typ":"JWT"})") + "." + base64url::encode(boost::json::serialize(claims));
    const auto digest = hmac_sha256(secret, signed_part);
    return signed_part + "." +
           base64url::encode(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
}

std::string read_secret_file(const std::string& path) {
    auto secret = read_config_file(path, "JWT secret file");
    while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) {
        secret.pop_back();
    }
    if (secret.size() < kMinSecretBytes) {
        throw std::invalid_argument(
            fmt::format("{}: an HS256 secret must be at least {} bytes, not {}", path, kMinSecretBytes, secret.size()));
    }
    return secret;
}

bool looks_like_jwt(std::string_view credential) noexcept {
    if (std::count(credential.begin(), credential.end(), '.') != 2) {
        return false;
    }
    const auto first_dot = credential.find('.');
    const auto second_dot = credential.find('.', first_dot + 1);
    return first_dot > 0 && second_dot > first_dot + 1 && second_dot + 1 < credential.size() &&
           std::all_of(credential.begin(), credential.end(),
                       [](char c) { return c == '.' || base64url::is_alphabet(c); });
}

}  // namespace conveyor::jwt
