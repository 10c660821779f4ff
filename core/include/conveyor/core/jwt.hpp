#pragma once

#include <boost/json/object.hpp>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

/// JSON Web Tokens (RFC 7519) signed with HS256 or RS256 (RFC 7518), verified with OpenSSL. Not Debian's cpp-jwt
/// 1.4: it does not require `exp`, reads an `aud` array (RFC 7519 §4.1.3) as a type error rather than a list, and
/// would bring a second JSON library; what a bearer token needs checked is short enough to check here, in one place.
namespace conveyor::jwt {

/// A token that must not be believed. The message says why in terms its holder can act on ("expired 2 min ago",
/// "signed with another key", "alg none is never accepted"), never echoing the token.
class Refused : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

enum class Algorithm { hs256, rs256 };

struct VerifierSettings {
    /// The one algorithm accepted: a token naming any other is refused, so an RS256 public key is never taken for an
    /// HS256 secret.
    Algorithm algorithm = Algorithm::hs256;
    /// HS256: the shared secret (at least 32 bytes, RFC 7518 §3.2); RS256: the public key, PEM (RSA, 2048 bits or
    /// more).
    std::string key;
    /// A token's `aud` (a string, or an array) must name it.
    std::string audience = "conveyor";
    /// If not empty, a token's `iss` must be it.
    std::string issuer;
    /// Clock skew forgiven on `exp`, `nbf` and `iat`.
    std::chrono::seconds leeway{30};
};

/// What a verified token says.
struct Claims {
    /// `sub`, or empty.
    std::string subject;
    /// `role`, or empty.
    std::string role;
    std::chrono::system_clock::time_point expires_at;
    boost::json::object all;
};

class Verifier {
  public:
    /// Throws std::invalid_argument for a key that cannot be used (too short, not PEM, not RSA, too small).
    explicit Verifier(VerifierSettings settings);
    ~Verifier();
    Verifier(Verifier&&) noexcept;
    Verifier& operator=(Verifier&&) noexcept;
    Verifier(const Verifier&) = delete;
    Verifier& operator=(const Verifier&) = delete;

    /// The token's claims once its signature, algorithm, `exp` (required), `nbf`, `iat`, `aud` and `iss` hold at
    /// `now`. Throws Refused.
    [[nodiscard]] Claims verify(std::string_view token, std::chrono::system_clock::time_point now) const;

  private:
    struct PublicKey;
    void check_signature(std::string_view signed_part, std::string_view signature) const;
    [[nodiscard]] Claims check_claims(boost::json::object payload, std::chrono::system_clock::time_point now) const;

    VerifierSettings settings_;
    std::unique_ptr<PublicKey> public_key_;
};

/// An HS256 token carrying `claims` (the caller sets exp, aud, role…). Throws std::invalid_argument for a secret
/// shorter than 32 bytes.
[[nodiscard]] std::string sign_hs256(const boost::json::object& claims, std::string_view secret);

/// The HS256 secret a file holds, without the newline an editor or `echo` leaves at its end. Throws
/// std::invalid_argument naming the file if it cannot be read or holds fewer than kMinSecretBytes.
[[nodiscard]] std::string read_secret_file(const std::string& path);

/// Whether a bearer credential has a JWT's compact shape (three dot-separated base64url parts) rather than being
/// a static API token.
[[nodiscard]] bool looks_like_jwt(std::string_view credential) noexcept;

/// Tokens longer than this are refused unread.
inline constexpr std::size_t kMaxTokenBytes = 8192;
/// HS256 secrets shorter than this are refused (RFC 7518 §3.2: at least the hash's size).
inline constexpr std::size_t kMinSecretBytes = 32;

}  // namespace conveyor::jwt
