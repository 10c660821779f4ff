#include "conveyor/core/jwt.hpp"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <boost/json/serialize.hpp>

namespace conveyor::jwt {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::system_clock;

const std::string kSecret = "a-secret-of-thirty-two-bytes-at-least-0123";
const Clock::time_point kNow = Clock::time_point(std::chrono::seconds(1'800'000'000));

std::int64_t seconds(Clock::time_point at) {
    return std::chrono::duration_cast<std::chrono::seconds>(at.time_since_epoch()).count();
}

boost::json::object claims(Clock::time_point expires_at = kNow + 1h) {
    return {{"sub", "alice"}, {"role", "operator"}, {"aud", "conveyor"}, {"exp", seconds(expires_at)}};
}

Verifier verifier(Algorithm algorithm, std::string key, std::string issuer = {}) {
    VerifierSettings settings;
    settings.algorithm = algorithm;
    settings.key = std::move(key);
    settings.issuer = std::move(issuer);
    return Verifier(std::move(settings));
}

Verifier hs256(std::string issuer = {}) {
    return verifier(Algorithm::hs256, kSecret, std::move(issuer));
}

/// Why `verifier` refuses `token`, or "accepted".
std::string verdict(const Verifier& verifier, const std::string& token, Clock::time_point now = kNow) {
    try {
        (void)verifier.verify(token, now);
        return "accepted";
    } catch (const Refused& e) {
        return e.what();
    }
}

std::string base64url(std::string_view bytes) {
    std::string text(4 * ((bytes.size() + 2) / 3) + 1, '\0');
    const int length =
        EVP_EncodeBlock(reinterpret_cast<unsigned char*>(text.data()),
                        reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
    text.resize(static_cast<std::size_t>(length));
    while (!text.empty() && text.back() == '=') {
        text.pop_back();
    }
    for (auto& c : text) {
        c = c == '+' ? '-' : c == '/' ? '_' : c;
    }
    return text;
}

/// An RSA key pair, with a token signer and its public key in PEM, made with OpenSSL directly (not through the code
/// under test).
class RsaKey {
  public:
    explicit RsaKey(unsigned bits) : key_(EVP_RSA_gen(bits), &EVP_PKEY_free) {}

    [[nodiscard]] std::string public_pem() const {
        const std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
        PEM_write_bio_PUBKEY(bio.get(), key_.get());
        char* data = nullptr;
        const auto length = BIO_get_mem_data(bio.get(), &data);
        return {data, static_cast<std::size_t>(length)};
    }

    [[nodiscard]] std::string sign(const std::string& header, const boost::json::object& payload) const {
        const auto signed_part = base64url(header) + "." + base64url(boost::json::serialize(payload));
        const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
        std::size_t length = 0;
        EVP_DigestSignInit(context.get(), nullptr, EVP_sha256(), nullptr, key_.get());
        EVP_DigestSign(context.get(), nullptr, &length, reinterpret_cast<const unsigned char*>(signed_part.data()),
                       signed_part.size());
        std::string signature(length, '\0');
        EVP_DigestSign(context.get(), reinterpret_cast<unsigned char*>(signature.data()), &length,
                       reinterpret_cast<const unsigned char*>(signed_part.data()), signed_part.size());
        signature.resize(length);
        return signed_part + "." + base64url(signature);
    }

  private:
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key_;
};

TEST(JwtTest, AcceptsAnHs256TokenAndReadsItsClaims) {
    const auto verified = hs256().verify(sign_hs256(claims(), kSecret), kNow);
    EXPECT_EQ(verified.subject, "alice");
    EXPECT_EQ(verified.role, "operator");
    EXPECT_EQ(verified.expires_at, kNow + 1h);
}

// RFC 7515 appendix A.1: its HS256 example verifies with its key (the signature is right; it then fails on the
// audience, which the example does not have) and not with another.
TEST(JwtTest, VerifiesTheRfcExampleSignature) {
    const std::string token =
        "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt"
        "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const std::string key_base64 =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ+EstJQLr/T+1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow==";
    std::string key(64, '\0');
    key.resize(static_cast<std::size_t>(EVP_DecodeBlock(reinterpret_cast<unsigned char*>(key.data()),
                                                        reinterpret_cast<const unsigned char*>(key_base64.data()),
                                                        static_cast<int>(key_base64.size()))) -
               2);  // EVP_DecodeBlock counts the two bytes "==" stands for
    ASSERT_EQ(key.size(), 64U);
    const auto before_expiry = Clock::time_point(std::chrono::seconds(1'300'819'000));
    EXPECT_EQ(verdict(verifier(Algorithm::hs256, key), token, before_expiry), "the token's aud does not name conveyor");
    key[0] ^= 1;
    EXPECT_EQ(verdict(verifier(Algorithm::hs256, key), token, before_expiry),
              "the token's signature does not verify: it was signed with another key, or altered");
}

TEST(JwtTest, RefusesForgedUnsignedAndConfusedTokens) {
    const auto token = sign_hs256(claims(), kSecret);
    EXPECT_EQ(verdict(hs256(), sign_hs256(claims(), kSecret + "x")),
              "the token's signature does not verify: it was signed with another key, or altered");
    auto altered = token;
    altered[token.find('.') + 2] ^= 1;
    EXPECT_NE(verdict(hs256(), altered), "accepted");
    const auto unsigned_token =
        base64url(R"({"alg":"none"})") + "." + base64url(boost::json::serialize(claims())) + ".";
    EXPECT_EQ(verdict(hs256(), unsigned_token), "not a JSON Web Token (header.payload.signature)");
    EXPECT_EQ(verdict(hs256(), unsigned_token + "c2ln"), "an unsigned token (alg none) is never accepted");

    // An HS256 token "signed" with the RS256 server's public key must not pass as RS256.
    const RsaKey rsa(2048);
    const auto rs256 = verifier(Algorithm::rs256, rsa.public_pem());
    EXPECT_EQ(verdict(rs256, sign_hs256(claims(), rsa.public_pem())),
              "the token is signed with HS256; this server accepts RS256 only");
    EXPECT_EQ(verdict(rs256, rsa.sign(R"({"alg":"RS256","typ":"JWT"})", claims())), "accepted");
    EXPECT_EQ(verdict(rs256, RsaKey(2048).sign(R"({"alg":"RS256"})", claims())),
              "the token's signature does not verify: it was signed with another key, or altered");
    EXPECT_EQ(verdict(rs256, rsa.sign(R"({"alg":"RS256","crit":["exp"]})", claims())),
              "the token names critical header extensions this server does not know");
}

TEST(JwtTest, ChecksExpiryNotBeforeAndIssuedAtWithThirtySecondsOfLeeway) {
    const auto verifier = hs256();
    EXPECT_EQ(verdict(verifier, sign_hs256(claims(kNow - 29s), kSecret)), "accepted");
    EXPECT_EQ(verdict(verifier, sign_hs256(claims(kNow - 31s), kSecret)), "the token expired 31 s ago");
    EXPECT_EQ(verdict(verifier, sign_hs256(claims(kNow - 2h), kSecret)), "the token expired 120 min ago");
    auto never_expires = claims();
    never_expires.erase("exp");
    EXPECT_EQ(verdict(verifier, sign_hs256(never_expires, kSecret)),
              "the token has no exp: tokens that never expire are not accepted");
    auto textual = claims();
    textual["exp"] = "tomorrow";
    EXPECT_EQ(verdict(verifier, sign_hs256(textual, kSecret)), "the token's exp is not a number of seconds");
    auto early = claims();
    early["nbf"] = seconds(kNow + 10min);
    EXPECT_EQ(verdict(verifier, sign_hs256(early, kSecret)), "the token is not valid for another 10 min");
    early["nbf"] = seconds(kNow + 20s);
    EXPECT_EQ(verdict(verifier, sign_hs256(early, kSecret)), "accepted");
    auto future = claims();
    future["iat"] = seconds(kNow + 5min);
    EXPECT_EQ(verdict(verifier, sign_hs256(future, kSecret)), "the token was issued in the future: check the clocks");
}

TEST(JwtTest, ChecksTheAudienceAsAStringOrAListAndTheIssuerWhenOneIsSet) {
    auto listed = claims();
    listed["aud"] = boost::json::array{"billing", "conveyor"};
    EXPECT_EQ(verdict(hs256(), sign_hs256(listed, kSecret)), "accepted");
    auto other = claims();
    other["aud"] = "billing";
    EXPECT_EQ(verdict(hs256(), sign_hs256(other, kSecret)), "the token's aud does not name conveyor");
    other.erase("aud");
    EXPECT_EQ(verdict(hs256(), sign_hs256(other, kSecret)), "the token's aud does not name conveyor");
    auto issued = claims();
    issued["iss"] = "https://sso.example.com";
    EXPECT_EQ(verdict(hs256("https://sso.example.com"), sign_hs256(issued, kSecret)), "accepted");
    EXPECT_EQ(verdict(hs256("https://login.example.com"), sign_hs256(issued, kSecret)),
              "the token's iss is not https://login.example.com");
    EXPECT_EQ(verdict(hs256("https://login.example.com"), sign_hs256(claims(), kSecret)),
              "the token's iss is not https://login.example.com");
}

TEST(JwtTest, RefusesMalformedTokensAndUnusableKeys) {
    for (const std::string token : {"", "abc", "a.b", "a..c", ".b.c", "a.b.", "a.b.c.d", "a b.c.d", "e30.e30.!!"}) {
        EXPECT_EQ(verdict(hs256(), token), "not a JSON Web Token (header.payload.signature)") << token;
    }
    EXPECT_EQ(verdict(hs256(), "e30.e30.c2ln"), "an unsigned token (alg none) is never accepted");
    EXPECT_EQ(verdict(hs256(), "bm90IGpzb24.e30.c2ln"), "the token's header is not a JSON object");
    EXPECT_EQ(verdict(hs256(), "A.e30.c2ln"), "the token's header is not base64url");
    EXPECT_EQ(verdict(hs256(), std::string(kMaxTokenBytes, 'a') + ".b.c"),
              "not a JSON Web Token (header.payload.signature)");
    EXPECT_TRUE(looks_like_jwt(sign_hs256(claims(), kSecret)));
    EXPECT_FALSE(looks_like_jwt("static-api-token"));

    EXPECT_THROW(verifier(Algorithm::hs256, "short"), std::invalid_argument);
    EXPECT_THROW((void)sign_hs256(claims(), "short"), std::invalid_argument);
    EXPECT_THROW(verifier(Algorithm::rs256, "not pem"), std::invalid_argument);
    EXPECT_THROW(verifier(Algorithm::rs256, RsaKey(1024).public_pem()), std::invalid_argument);
}

}  // namespace
}  // namespace conveyor::jwt
