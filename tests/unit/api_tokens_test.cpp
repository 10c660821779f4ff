#include "conveyor/scheduler/api_tokens.hpp"

#include <gtest/gtest.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>

namespace conveyor::scheduler {
namespace {

using std::chrono::milliseconds;

std::array<unsigned char, 32> sha256_of(std::string_view secret) {
    std::array<unsigned char, 32> digest{};
    SHA256(reinterpret_cast<const unsigned char*>(secret.data()), secret.size(), digest.data());
    return digest;
}

std::string hex_sha256(std::string_view secret) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string hex;
    for (const auto byte : sha256_of(secret)) {
        hex += digits[byte >> 4];
        hex += digits[byte & 0xf];
    }
    return hex;
}

std::string upper(std::string text) {
    std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::toupper(c); });
    return text;
}

const std::string alice_secret = "alice-s3cret-0123456789";
const std::string bob_secret = "bob-s3cret-9876543210";

// Two tokens: alice (line 2) may enqueue at 5/s, bob (line 6) is an admin with the default rate.
std::string two_tokens() {
    return "tokens:\n"
           "  - name: alice\n"
           "    sha256: " +
           hex_sha256(alice_secret) +
           "\n"
           "    scopes: [enqueue]\n"
           "    rate_limit: 5\n"
           "  - name: bob\n"
           "    sha256: " +
           hex_sha256(bob_secret) +
           "\n"
           "    scopes: [admin]\n";
}

// A file whose first token (line 2) is valid and whose second token starts at line 5 with `second` as its body
// (each line already indented by four spaces but the first, which follows "  - ").
std::string second_token(const std::string& second) {
    return "tokens:\n"
           "  - name: alice\n"
           "    sha256: " +
           hex_sha256(alice_secret) +
           "\n"
           "    scopes: [enqueue]\n"
           "  - " +
           second;
}

std::string refusal(const std::string& yaml) {
    try {
        (void)parse_api_tokens(yaml, "tokens.yaml");
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "accepted";
}

const std::string known_keys = "(known: name, sha256, scopes, role, rate_limit)";
const std::string sha256_required =
    "'sha256' is required: the token's SHA-256 in hex (e.g. printf %s \"$TOKEN\" | sha256sum)";

TEST(ApiTokens, AValidFileWithTwoTokensParses) {
    const auto tokens = parse_api_tokens(two_tokens(), "tokens.yaml");
    ASSERT_EQ(tokens.size(), 2u);

    EXPECT_EQ(tokens[0].name, "alice");
    EXPECT_EQ(tokens[0].sha256, sha256_of(alice_secret));
    EXPECT_EQ(tokens[0].scopes, std::set<Scope>{Scope::enqueue});
    ASSERT_TRUE(tokens[0].rate_limit.has_value());
    EXPECT_DOUBLE_EQ(*tokens[0].rate_limit, 5.0);
    EXPECT_TRUE(tokens[0].allows(Scope::enqueue));
    EXPECT_FALSE(tokens[0].allows(Scope::admin)) << "enqueue must not imply admin";

    EXPECT_EQ(tokens[1].name, "bob");
    EXPECT_EQ(tokens[1].sha256, sha256_of(bob_secret));
    EXPECT_EQ(tokens[1].scopes, std::set<Scope>{Scope::admin});
    EXPECT_FALSE(tokens[1].rate_limit.has_value()) << "rate_limit is optional";
    EXPECT_TRUE(tokens[1].allows(Scope::admin));
    EXPECT_TRUE(tokens[1].allows(Scope::enqueue)) << "admin implies enqueue";
}

TEST(ApiTokens, BothScopesAndAFractionalRateParse) {
    const auto tokens = parse_api_tokens(second_token("name: carol\n"
                                                      "    sha256: " +
                                                      hex_sha256("carol") +
                                                      "\n"
                                                      "    scopes: [enqueue, admin]\n"
                                                      "    rate_limit: 0.5\n"),
                                         "tokens.yaml");
    ASSERT_EQ(tokens.size(), 2u);
    EXPECT_EQ(tokens[1].scopes, (std::set<Scope>{Scope::enqueue, Scope::admin}));
    ASSERT_TRUE(tokens[1].rate_limit.has_value());
    EXPECT_DOUBLE_EQ(*tokens[1].rate_limit, 0.5);
}

TEST(ApiTokens, AnEmptyTokensListParses) {
    EXPECT_TRUE(parse_api_tokens("tokens: []\n", "tokens.yaml").empty());
}

TEST(ApiTokens, UpperCaseHexDigestsAreAccepted) {
    const auto yaml =
        "tokens:\n"
        "  - name: alice\n"
        "    sha256: " +
        upper(hex_sha256(alice_secret)) +
        "\n"
        "    scopes: [enqueue]\n";
    const auto tokens = parse_api_tokens(yaml, "tokens.yaml");
    ASSERT_EQ(tokens.size(), 1u);
    EXPECT_EQ(tokens[0].sha256, sha256_of(alice_secret));
    EXPECT_EQ(find_token(tokens, alice_secret), &tokens[0]);
}

TEST(ApiTokens, AMissingNameIsRefused) {
    EXPECT_EQ(refusal(second_token("sha256: " + hex_sha256("x") + "\n    scopes: [enqueue]\n")),
              "tokens.yaml:5: token #2: 'name' is required");
    EXPECT_EQ(refusal(second_token("name: \"\"\n    sha256: " + hex_sha256("x") + "\n    scopes: [enqueue]\n")),
              "tokens.yaml:5: token #2: 'name' is required");
    EXPECT_EQ(refusal(second_token("name: [a, b]\n    sha256: " + hex_sha256("x") + "\n    scopes: [enqueue]\n")),
              "tokens.yaml:5: token #2: 'name' is required");
}

TEST(ApiTokens, AMissingSha256IsRefused) {
    EXPECT_EQ(refusal(second_token("name: bob\n    scopes: [enqueue]\n")),
              "tokens.yaml:5: token 'bob': " + sha256_required);
}

TEST(ApiTokens, AShortOrLongSha256IsRefused) {
    const auto digest = hex_sha256(bob_secret);
    EXPECT_EQ(refusal(second_token("name: bob\n    sha256: " + digest.substr(1) + "\n    scopes: [enqueue]\n")),
              "tokens.yaml:5: token 'bob': 'sha256' must be 64 hexadecimal digits");
    EXPECT_EQ(refusal(second_token("name: bob\n    sha256: " + digest + "0\n    scopes: [enqueue]\n")),
              "tokens.yaml:5: token 'bob': 'sha256' must be 64 hexadecimal digits");
    EXPECT_EQ(refusal(second_token("name: bob\n    sha256: \"\"\n    scopes: [enqueue]\n")),
              "tokens.yaml:5: token 'bob': 'sha256' must be 64 hexadecimal digits");
}

TEST(ApiTokens, ANonHexSha256IsRefused) {
    const auto digest = hex_sha256(bob_secret);
    for (const auto* bad : {"zz", "0g", "g0", "+f", "-1", " f", "0x"}) {
        auto text = digest;
        text.replace(10, 2, bad);
        EXPECT_EQ(refusal(second_token("name: bob\n    sha256: \"" + text + "\"\n    scopes: [enqueue]\n")),
                  "tokens.yaml:5: token 'bob': 'sha256' must be 64 hexadecimal digits")
            << "digest with '" << bad << "': " << text;
    }
}

TEST(ApiTokens, EmptyScopesAreRefused) {
    const auto head = "name: bob\n    sha256: " + hex_sha256(bob_secret) + "\n";
    const std::string message = "tokens.yaml:5: token 'bob': 'scopes' must list enqueue and/or admin (or give a role)";
    EXPECT_EQ(refusal(second_token(head + "    scopes: []\n")), message);
    EXPECT_EQ(refusal(second_token(head)), message);
    EXPECT_EQ(refusal(second_token(head + "    scopes: enqueue\n")), message);
}

TEST(ApiTokens, AnUnknownScopeIsRefused) {
    const auto head = "name: bob\n    sha256: " + hex_sha256(bob_secret) + "\n";
    EXPECT_EQ(refusal(second_token(head + "    scopes: [enqueue, delete]\n")),
              "tokens.yaml:5: token 'bob': unknown scope 'delete' (known: enqueue, admin)");
    EXPECT_EQ(refusal(second_token(head + "    scopes: [Admin]\n")),
              "tokens.yaml:5: token 'bob': unknown scope 'Admin' (known: enqueue, admin)");
}

TEST(ApiTokens, AnUnknownKeyIsRefused) {
    EXPECT_EQ(refusal(second_token("name: bob\n    sha256: " + hex_sha256(bob_secret) +
                                   "\n    scopes: [enqueue]\n    rate: 3\n")),
              "tokens.yaml:5: token 'bob': unknown key 'rate' " + known_keys);
}

TEST(ApiTokens, ARateLimitBelowOneRequestIn17MinutesIsRefused) {
    const auto head = "name: bob\n    sha256: " + hex_sha256(bob_secret) + "\n    scopes: [enqueue]\n";
    for (const std::string bad : {"0", "-1", "-0.5", "abc", "5/s", "nan", "1e-300", "0.0009"}) {
        EXPECT_EQ(
            refusal(second_token(head + "    rate_limit: " + bad + "\n")),
            "tokens.yaml:5: token 'bob': 'rate_limit' must be at least 0.001 requests per second, not '" + bad + "'");
    }
}

TEST(ApiTokens, ADuplicateNameIsRefused) {
    EXPECT_EQ(refusal(second_token("name: alice\n    sha256: " + hex_sha256(bob_secret) + "\n    scopes: [admin]\n")),
              "tokens.yaml:5: token 'alice' repeats the name or the hash of 'alice'");
}

TEST(ApiTokens, ADuplicateHashIsRefused) {
    EXPECT_EQ(
        refusal(second_token("name: bob\n    sha256: " + upper(hex_sha256(alice_secret)) + "\n    scopes: [admin]\n")),
        "tokens.yaml:5: token 'bob' repeats the name or the hash of 'alice'");
}

TEST(ApiTokens, ADocumentWithoutATokensListIsRefused) {
    const std::string message = "tokens.yaml: expected a top-level 'tokens:' list";
    EXPECT_EQ(refusal(""), message);
    EXPECT_EQ(refusal("tokens:\n"), message);
    EXPECT_EQ(refusal("tokens: {name: alice}\n"), message);
    EXPECT_EQ(refusal("- name: alice\n"), message);
    EXPECT_EQ(refusal("tokenz: []\n"), message);
}

TEST(ApiTokens, AnEntryThatIsNotAMappingIsRefused) {
    EXPECT_EQ(refusal(second_token("bob\n")), "tokens.yaml:5: token #2: expected a mapping with name, sha256, scopes");
}

TEST(ApiTokens, InvalidYamlIsRefused) {
    EXPECT_EQ(refusal("tokens:\n  - name: alice\n   scopes: [enqueue]\n"),
              "tokens.yaml:3: not valid YAML: end of sequence not found");
    EXPECT_EQ(refusal("tokens:\n  - name: alice\n    scopes: [enqueue]]\n"),
              "tokens.yaml:3: not valid YAML: illegal flow end");
    // An unclosed flow collection is reported where the parser gave up: the end of the file.
    EXPECT_EQ(refusal("tokens:\n  - name: alice\n    scopes: [enqueue\n"),
              "tokens.yaml:4: not valid YAML: end of sequence flow not found");
}

TEST(ApiTokens, LoadingAMissingFileIsRefused) {
    try {
        (void)load_api_tokens("/nonexistent/conveyor/tokens.yaml");
        FAIL() << "accepted";
    } catch (const std::invalid_argument& e) {
        EXPECT_STREQ(e.what(), "cannot read the API tokens file /nonexistent/conveyor/tokens.yaml");
    }
}

TEST(ApiTokens, FindTokenReturnsTheTokenForItsSecret) {
    const auto tokens = parse_api_tokens(two_tokens(), "tokens.yaml");
    ASSERT_EQ(tokens.size(), 2u);
    EXPECT_EQ(find_token(tokens, alice_secret), &tokens[0]);
    EXPECT_EQ(find_token(tokens, bob_secret), &tokens[1]);
}

TEST(ApiTokens, FindTokenReturnsNullForAWrongSecret) {
    const auto tokens = parse_api_tokens(two_tokens(), "tokens.yaml");
    EXPECT_EQ(find_token(tokens, "not-a-token"), nullptr);
    EXPECT_EQ(find_token(tokens, hex_sha256(alice_secret)), nullptr) << "the digest itself is not the secret";
    EXPECT_EQ(find_token({}, alice_secret), nullptr);
}

TEST(ApiTokens, FindTokenReturnsNullForAnEmptySecret) {
    const auto tokens = parse_api_tokens(two_tokens(), "tokens.yaml");
    EXPECT_EQ(find_token(tokens, ""), nullptr);
    EXPECT_EQ(find_token(tokens, std::string_view{}), nullptr);
}

TEST(ApiTokens, FindTokenReturnsNullForASecretOneCharacterOff) {
    const auto tokens = parse_api_tokens(two_tokens(), "tokens.yaml");
    for (std::size_t i = 0; i < alice_secret.size(); ++i) {
        auto secret = alice_secret;
        secret[i] ^= 1;
        EXPECT_EQ(find_token(tokens, secret), nullptr) << secret;
    }
    EXPECT_EQ(find_token(tokens, alice_secret.substr(0, alice_secret.size() - 1)), nullptr);
    EXPECT_EQ(find_token(tokens, alice_secret + "x"), nullptr);
}

Caller token(std::string name, std::optional<double> rate_limit) {
    ApiToken result;
    result.name = std::move(name);
    result.scopes = {Scope::enqueue};
    result.rate_limit = rate_limit;
    return Caller::of(result);
}

TEST(ApiTokensRoles, ARoleGrantsWhatItMayAndTheAdminScopeIsTheAdminRole) {
    const auto tokens = parse_api_tokens(
        "tokens:\n"
        "  - name: grafana\n"
        "    sha256: " +
            hex_sha256("g") +
            "\n"
            "    role: viewer\n"
            "  - name: oncall\n"
            "    sha256: " +
            hex_sha256("o") +
            "\n"
            "    role: operator\n"
            "  - name: ops\n"
            "    sha256: " +
            hex_sha256("a") +
            "\n"
            "    scopes: [admin]\n"
            "  - name: shop\n"
            "    sha256: " +
            hex_sha256("s") +
            "\n"
            "    scopes: [enqueue]\n",
        "tokens.yaml");
    ASSERT_EQ(tokens.size(), 4U);
    const auto viewer = Caller::of(tokens[0]);
    const auto operator_ = Caller::of(tokens[1]);
    const auto admin = Caller::of(tokens[2]);
    const auto shop = Caller::of(tokens[3]);
    EXPECT_TRUE(viewer.may(Permission::view));
    EXPECT_FALSE(viewer.may(Permission::operate));
    EXPECT_FALSE(viewer.may(Permission::enqueue));
    EXPECT_TRUE(operator_.may(Permission::operate));
    EXPECT_TRUE(operator_.may(Permission::enqueue)) << "an operator runs jobs";
    EXPECT_FALSE(operator_.may(Permission::administer));
    EXPECT_TRUE(admin.may(Permission::administer));
    EXPECT_TRUE(admin.may(Permission::enqueue));
    EXPECT_TRUE(shop.may(Permission::enqueue));
    EXPECT_TRUE(shop.may(Permission::authenticated));
    EXPECT_FALSE(shop.may(Permission::view)) << "an enqueue-only token reads nothing";
    EXPECT_EQ(shop.source(), "api:shop");

    EXPECT_EQ(refusal("tokens:\n  - name: x\n    sha256: " + hex_sha256("x") + "\n    role: root\n"),
              "tokens.yaml:2: token 'x': 'role' must be viewer, operator or admin");
}

TEST(ApiTokensRateLimiter, ARateOfTwoAllowsTwoAtOnceThenWaitsAtMostHalfASecond) {
    RateLimiter limiter(100);
    const auto alice = token("alice", 2.0);
    EXPECT_EQ(limiter.try_acquire(alice), std::nullopt);
    EXPECT_EQ(limiter.try_acquire(alice), std::nullopt);
    const auto wait = limiter.try_acquire(alice);
    ASSERT_TRUE(wait.has_value()) << "a third request at once must be refused";
    EXPECT_GT(*wait, milliseconds(0));
    EXPECT_LE(*wait, milliseconds(500));

    std::this_thread::sleep_for(*wait);
    EXPECT_EQ(limiter.try_acquire(alice), std::nullopt) << "allowed again after the reported wait";
}

TEST(ApiTokensRateLimiter, HalfARequestPerSecondHasABucketOfOneAndWaitsAboutTwoSeconds) {
    RateLimiter limiter(100);
    const auto slow = token("slow", 0.5);
    EXPECT_EQ(limiter.try_acquire(slow), std::nullopt);
    const auto wait = limiter.try_acquire(slow);
    ASSERT_TRUE(wait.has_value()) << "the bucket is one request deep";
    EXPECT_GE(*wait, milliseconds(1950));
    EXPECT_LE(*wait, milliseconds(2000));
}

TEST(ApiTokensRateLimiter, BucketsArePerToken) {
    RateLimiter limiter(100);
    const auto alice = token("alice", 1.0);
    const auto bob = token("bob", 1.0);
    EXPECT_EQ(limiter.try_acquire(alice), std::nullopt);
    EXPECT_TRUE(limiter.try_acquire(alice).has_value());
    EXPECT_TRUE(limiter.try_acquire(alice).has_value());
    EXPECT_EQ(limiter.try_acquire(bob), std::nullopt) << "alice's empty bucket must not limit bob";
    EXPECT_TRUE(limiter.try_acquire(bob).has_value());
}

TEST(ApiTokensRateLimiter, TheDefaultRateAppliesWhenTheTokenHasNone) {
    RateLimiter limiter(3);
    const auto plain = token("plain", std::nullopt);
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(limiter.try_acquire(plain), std::nullopt) << "request " << i + 1;
    }
    const auto wait = limiter.try_acquire(plain);
    ASSERT_TRUE(wait.has_value()) << "the default bucket is three requests deep";
    EXPECT_GT(*wait, milliseconds(0));
    EXPECT_LE(*wait, milliseconds(334));

    // A token's own rate overrides the default.
    const auto own = token("own", 1.0);
    EXPECT_EQ(limiter.try_acquire(own), std::nullopt);
    EXPECT_TRUE(limiter.try_acquire(own).has_value());
}

TEST(ApiTokensRateLimiter, ASlowDefaultStillAllowsOneRequest) {
    RateLimiter limiter(0.25);
    const auto plain = token("plain", std::nullopt);
    EXPECT_EQ(limiter.try_acquire(plain), std::nullopt);
    const auto wait = limiter.try_acquire(plain);
    ASSERT_TRUE(wait.has_value());
    EXPECT_GE(*wait, milliseconds(3950));
    EXPECT_LE(*wait, milliseconds(4000));
}

}  // namespace
}  // namespace conveyor::scheduler
