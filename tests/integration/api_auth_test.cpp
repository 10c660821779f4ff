// The HTTP API's roles with JSON Web Tokens, against a real conveyor-scheduler: tokens signed by `conveyor token`
// (HS256) and by the openssl command (RS256, a key pair made for the test), each role allowed what it may and
// refused the rest, and every token that must not be believed refused with 401.
#include <fmt/format.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <filesystem>

#include "conveyor/core/jwt.hpp"
#include "scheduler_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

const std::string kSecret = "the-schedulers-hs256-secret-0123456789";

class ApiAuthTest : public SchedulerFixture {
  protected:
    static std::filesystem::path secret_file() {
        auto path = std::filesystem::temp_directory_path() / "conveyor-jwt-secret";
        std::ofstream(path) << kSecret << '\n';
        return path;
    }

    /// A token as `conveyor token` signs it.
    static std::string token(const std::string& role, const std::string& subject = "alice") {
        auto [status, output] = run_command({(binary_dir() / "conveyor").string(), "token", "--role", role, "--subject",
                                             subject, "--ttl", "10m", "--jwt-secret-file", secret_file().string()},
                                            10s);
        EXPECT_EQ(status, 0) << output;
        return output.substr(0, output.find('\n'));
    }

    static std::int64_t epoch_seconds(std::chrono::system_clock::duration from_now) {
        return std::chrono::duration_cast<std::chrono::seconds>(
                   (std::chrono::system_clock::now() + from_now).time_since_epoch())
            .count();
    }

    static boost::json::object claims(std::chrono::system_clock::duration expires_in = 10min) {
        return {{"sub", "mallory"}, {"role", "admin"}, {"aud", "conveyor"}, {"exp", epoch_seconds(expires_in)}};
    }

    static std::string base64url(const std::string& text) {
        auto [status, output] =
            run_command({"/bin/sh", "-c", "printf %s '" + text + "' | base64 -w0 | tr '+/' '-_' | tr -d '='"}, 10s);
        return output;
    }

    std::uint16_t port_ = 0;
    int status(const std::string& method, const std::string& path, const std::string& bearer,
               const std::string& body = {}) {
        return call_api(port_, method, path, bearer, body).status;
    }
};

TEST_F(ApiAuthTest, EachRoleDoesWhatItMayAndIsRefusedTheRestWith403) {
    database_.query("DELETE FROM conveyor.scheduled_jobs WHERE source LIKE 'api:user:%'");
    auto scheduler = start_scheduler({"--jwt-secret-file", secret_file().string()}, "api-auth-roles");
    port_ = scheduler.port;
    const auto viewer = token("viewer");
    const auto operator_ = token("operator", "olga");
    const auto admin = token("admin", "ada");
    const std::string nothing_matches = R"({"filter": {"type": "no.such-type"}})";

    for (const auto* path : {"/v1/jobs", "/v1/dead-letters", "/v1/queues", "/v1/scheduled", "/v1/schedules"}) {
        EXPECT_EQ(status("GET", path, viewer), 200) << path;
    }
    const auto refused = call_api(port_, "POST", "/v1/queues/diag/pause", viewer);
    EXPECT_EQ(refused.status, 403);
    EXPECT_NE(refused.body.find("user:alice lacks the operator role"), std::string::npos) << refused.body;
    EXPECT_EQ(status("DELETE", "/v1/jobs/some-job", viewer), 403);
    EXPECT_EQ(status("POST", "/v1/dead-letters/replay", viewer, nothing_matches), 403);
    EXPECT_EQ(status("POST", "/v1/dead-letters/purge", viewer, nothing_matches), 403);
    EXPECT_EQ(status("POST", "/v1/jobs", viewer, R"({"type": "diag.noop"})"), 403);

    EXPECT_EQ(status("POST", "/v1/queues/diag/pause", operator_), 200);
    EXPECT_EQ(status("POST", "/v1/queues/diag/resume", operator_), 200);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.queue_pauses WHERE paused"), 0);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.queue_pauses WHERE family = 'diag' AND job_type = '' "
                               "AND changed_by = 'api:user:olga'"),
              1)
        << "the change is not recorded under the token's subject";
    EXPECT_EQ(status("POST", "/v1/dead-letters/replay", operator_, R"({"filter": {}, "dry_run": true})"), 200);
    EXPECT_EQ(status("POST", "/v1/jobs", operator_, R"({"type": "diag.noop"})"), 202);
    EXPECT_EQ(status("POST", "/v1/dead-letters/purge", operator_, nothing_matches), 403);

    EXPECT_EQ(status("POST", "/v1/dead-letters/purge", admin, nothing_matches), 200);
    // The caller's name is the token's subject: its enqueues live in the namespace api:user:<sub>.
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.scheduled_jobs WHERE source = 'api:user:olga'"), 1);
}

TEST_F(ApiAuthTest, ExpiredForgedUnsignedAndMisaddressedTokensAreRefusedWith401) {
    auto scheduler = start_scheduler({"--jwt-secret-file", secret_file().string()}, "api-auth-refusals");
    port_ = scheduler.port;
    const auto expect_refused = [&](const std::string& bearer, const std::string& why, unsigned code = 401) {
        const auto response = call_api(port_, "GET", "/v1/queues", bearer);
        EXPECT_EQ(response.status, code) << why << ": " << response.body;
        EXPECT_NE(response.body.find(why), std::string::npos) << response.body;
    };
    // 31 s, or 32 when a second begins between the signing and the check.
    expect_refused(jwt::sign_hs256(claims(-31s), kSecret), "the token expired 3");
    EXPECT_EQ(status("GET", "/v1/queues", jwt::sign_hs256(claims(-20s), kSecret)), 200)
        << "a token expired less than the 30 s of leeway ago is accepted";
    expect_refused(jwt::sign_hs256(claims(), kSecret + "-guessed"), "signed with another key");
    const auto payload = base64url(boost::json::serialize(claims()));
    expect_refused(base64url(R"({"alg":"none","typ":"JWT"})") + "." + payload + ".c2ln", "alg none");
    expect_refused(base64url(R"({"alg":"RS256","typ":"JWT"})") + "." + payload + ".c2ln", "accepts HS256 only");
    auto elsewhere = claims();
    elsewhere["aud"] = "billing";
    expect_refused(jwt::sign_hs256(elsewhere, kSecret), "aud does not name conveyor");
    auto superuser = claims();
    superuser["role"] = "superuser";
    expect_refused(jwt::sign_hs256(superuser, kSecret), "role claim must be viewer, operator or admin", 403);
    auto anonymous = claims();
    anonymous.erase("sub");
    expect_refused(jwt::sign_hs256(anonymous, kSecret), "has no sub");
    const auto response = call_api(port_, "GET", "/v1/queues", jwt::sign_hs256(claims(-1h), kSecret));
    EXPECT_EQ(response.headers.at("www-authenticate"), R"(Bearer realm="conveyor", error="invalid_token")");
}

TEST_F(ApiAuthTest, AnRs256ServerTakesTokensSignedWithItsKeyPairOnly) {
    const auto directory = std::filesystem::temp_directory_path() / "conveyor-rs256";
    std::filesystem::create_directories(directory);
    const auto key = (directory / "key.pem").string();
    const auto public_key = (directory / "public.pem").string();
    const auto other_key = (directory / "other.pem").string();
    for (const auto& path : {key, other_key}) {
        ASSERT_EQ(run_command({"/usr/bin/openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                               "-out", path},
                              30s)
                      .first,
                  0);
    }
    ASSERT_EQ(run_command({"/usr/bin/openssl", "pkey", "-in", key, "-pubout", "-out", public_key}, 10s).first, 0);
    const auto sign = [&](const std::string& with_key) {
        const auto signed_part =
            base64url(R"({"alg":"RS256","typ":"JWT"})") + "." +
            base64url(boost::json::serialize(boost::json::object{
                {"sub", "rhea"}, {"role", "viewer"}, {"aud", "conveyor"}, {"exp", epoch_seconds(10min)}}));
        auto [status, signature] = run_command({"/bin/sh", "-c",
                                                "printf %s '" + signed_part + "' | openssl dgst -sha256 -sign " +
                                                    with_key + " | base64 -w0 | tr '+/' '-_' | tr -d '='"},
                                               10s);
        EXPECT_EQ(status, 0) << signature;
        return signed_part + "." + signature;
    };
    auto scheduler = start_scheduler({"--jwt-public-key-file", public_key}, "api-auth-rs256");
    port_ = scheduler.port;
    EXPECT_EQ(status("GET", "/v1/queues", sign(key)), 200);
    EXPECT_EQ(status("GET", "/v1/queues", sign(other_key)), 401);
    EXPECT_EQ(status("POST", "/v1/queues/diag/pause", sign(key)), 403) << "a viewer paused a queue";
    // The public key, known to anyone, used as an HS256 secret must not pass (algorithm confusion).
    std::ifstream pem(public_key);
    const std::string pem_text((std::istreambuf_iterator<char>(pem)), {});
    EXPECT_EQ(status("GET", "/v1/queues", jwt::sign_hs256(claims(), pem_text)), 401);
}

TEST_F(ApiAuthTest, ASchedulerWithAnUnusableKeySaysWhatIsWrongAndDoesNotStart) {
    const auto short_secret = std::filesystem::temp_directory_path() / "conveyor-short-secret";
    std::ofstream(short_secret) << "too-short\n";
    auto [status, output] = run_command({(binary_dir() / "conveyor-scheduler").string(), "--jwt-secret-file",
                                         short_secret.string(), "--pg-url", pg_url(), "--amqp-url", amqp_url()},
                                        30s);
    EXPECT_EQ(status, 2) << output;
    EXPECT_NE(output.find("an HS256 secret must be at least 32 bytes, not 9"), std::string::npos) << output;
    const auto [token_status, token_output] =
        run_command({(binary_dir() / "conveyor").string(), "token", "--role", "root", "--subject", "x",
                     "--jwt-secret-file", secret_file().string()},
                    10s);
    EXPECT_EQ(token_status, 2) << token_output;
}

/// The console's sign-in: a token buys an HttpOnly, SameSite=Strict cookie (only its hash is stored) that another
/// replica accepts too; reads with it need nothing more, changes need the session's CSRF token, a viewer's session
/// changes nothing, and a sign-out or the expiry ends it everywhere.
TEST_F(ApiAuthTest, AConsoleSessionReadsWithItsCookieChangesWithItsCsrfTokenAndEndsEverywhere) {
    database_.query("TRUNCATE conveyor.console_sessions");
    const auto tokens = write_file("console-tokens", fmt::format("tokens:\n  - name: shop\n    sha256: {}\n"
                                                                 "    scopes: [enqueue]\n",
                                                                 sha256("enqueue-secret")));
    const std::vector<std::string> args{"--jwt-secret-file", secret_file().string(), "--api-tokens-file",
                                        tokens.string()};
    auto first = start_scheduler(args, "console-first");
    auto second = start_scheduler(args, "console-second");
    const auto sign_in = [&](const std::string& credential) {
        return call_api(first.port, "POST", "/console/api/session", "", R"({"token": ")" + credential + R"("})");
    };
    const auto signed_in = sign_in(token("operator", "olga"));
    ASSERT_EQ(signed_in.status, 201) << signed_in.body;
    const auto& set_cookie = signed_in.headers.at("set-cookie");
    for (const auto* attribute : {"; Path=/", "; HttpOnly", "; SameSite=Strict", "; Max-Age="}) {
        EXPECT_NE(set_cookie.find(attribute), std::string::npos) << set_cookie;
    }
    const auto max_age = std::stoi(set_cookie.substr(set_cookie.find("Max-Age=") + 8));
    EXPECT_GT(max_age, 500) << "the session outlives its 10 minute token";
    EXPECT_LE(max_age, 600) << "the session outlives its 10 minute token";
    const auto value = set_cookie.substr(set_cookie.find('=') + 1, set_cookie.find(';') - set_cookie.find('=') - 1);
    const auto cookie = "Cookie: conveyor_session=" + value;
    const auto csrf = std::string(boost::json::parse(signed_in.body).at("csrf_token").as_string());
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.console_sessions WHERE id_sha256 = "
                               "sha256(convert_to($1, 'UTF8'))",
                               {value}),
              1)
        << "the session is not stored by its cookie's SHA-256";

    const auto call = [&](std::uint16_t port, const std::string& method, const std::string& path,
                          const std::vector<std::string>& headers) {
        return call_api(port, method, path, "", {}, headers).status;
    };
    EXPECT_EQ(call(second.port, "GET", "/v1/queues", {cookie}), 200) << "another replica refused the session";
    EXPECT_EQ(call(first.port, "POST", "/v1/queues/diag/pause", {cookie}), 403) << "a change without the CSRF token";
    EXPECT_EQ(call(first.port, "POST", "/v1/queues/diag/pause", {cookie, "X-CSRF-Token: " + csrf + "x"}), 403);
    EXPECT_EQ(call(second.port, "POST", "/v1/queues/diag/pause", {cookie, "X-CSRF-Token: " + csrf}), 200);
    EXPECT_EQ(call(second.port, "POST", "/v1/queues/diag/resume", {cookie, "X-CSRF-Token: " + csrf}), 200);
    EXPECT_EQ(database_.scalar("SELECT count(*) FROM conveyor.queue_pauses WHERE family = 'diag' AND job_type = '' "
                               "AND NOT paused AND changed_by = 'api:user:olga'"),
              1);
    const auto shown = call_api(first.port, "GET", "/console/api/session", "", {}, {cookie});
    EXPECT_NE(shown.body.find(R"("user":"user:olga","role":"operator")"), std::string::npos) << shown.body;

    const auto viewer = sign_in(token("viewer", "vera"));
    ASSERT_EQ(viewer.status, 201) << viewer.body;
    const auto viewer_cookie = viewer.headers.at("set-cookie");
    const auto viewer_csrf = std::string(boost::json::parse(viewer.body).at("csrf_token").as_string());
    EXPECT_EQ(call(first.port, "POST", "/v1/queues/diag/pause",
                   {"Cookie: " + viewer_cookie.substr(0, viewer_cookie.find(';')), "X-CSRF-Token: " + viewer_csrf}),
              403)
        << "a viewer's session paused a queue";
    EXPECT_EQ(sign_in("enqueue-secret").status, 403) << "an enqueue-only token signed in to the console";
    EXPECT_EQ(sign_in("no-such-token").status, 401);
    EXPECT_EQ(call_api(first.port, "POST", "/console/api/session", "", R"({"secret": "x"})").status, 400);

    EXPECT_EQ(call(first.port, "DELETE", "/console/api/session", {cookie}), 403) << "signed out without CSRF";
    const auto signed_out =
        call_api(first.port, "DELETE", "/console/api/session", "", {}, {cookie, "X-CSRF-Token: " + csrf});
    EXPECT_EQ(signed_out.status, 200) << signed_out.body;
    EXPECT_NE(signed_out.headers.at("set-cookie").find("Max-Age=0"), std::string::npos);
    EXPECT_EQ(call(second.port, "GET", "/v1/queues", {cookie}), 401) << "the session outlived its sign-out";

    database_.query("UPDATE conveyor.console_sessions SET expires_at = now() - interval '1 second'");
    EXPECT_EQ(call(second.port, "GET", "/v1/queues", {"Cookie: " + viewer_cookie.substr(0, viewer_cookie.find(';'))}),
              401)
        << "an expired session was accepted";
}

/// With a certificate and key the port serves HTTPS only: a client that trusts the certificate signs in and gets a
/// Secure cookie; plain HTTP on the port gets no answer, is counted, and leaves the server serving; a key that is
/// not PEM stops the scheduler with exit 2 naming the file.
TEST_F(ApiAuthTest, OverTlsTheConsoleCookieIsSecureAndPlainHttpIsRefused) {
    const auto dir = std::filesystem::temp_directory_path();
    const auto cert = (dir / "conveyor-tls-test.crt").string();
    const auto key = (dir / "conveyor-tls-test.key").string();
    ASSERT_EQ(run_command({"/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out",
                           cert, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"},
                          30s)
                  .first,
              0);
    const std::uint16_t port = 19590;
    const auto origin = fmt::format("https://127.0.0.1:{}", port);
    Process scheduler(binary_dir() / "conveyor-scheduler",
                      {"--jwt-secret-file", secret_file().string(), "--tls-cert-file", cert, "--tls-key-file", key,
                       "--http-port", std::to_string(port), "--amqp-url", amqp_url(), "--pg-url", pg_url()},
                      dir / "conveyor-api-auth-tls.log");
    const auto https = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {"/usr/bin/curl", "-sS", "-i", "--max-time", "5", "--cacert", cert});
        return run_command(args, 10s);
    };
    ASSERT_TRUE(eventually([&] { return https({origin + "/readyz"}).second.find(" 200") != std::string::npos; }, 30s))
        << scheduler.log();

    const auto signed_in = https({"-X", "POST", "-H", "Content-Type: application/json", "-d",
                                  R"({"token": ")" + token("operator") + R"("})", origin + "/console/api/session"});
    EXPECT_NE(signed_in.second.find(" 201"), std::string::npos) << signed_in.second;
    EXPECT_NE(signed_in.second.find("; Secure"), std::string::npos) << "the session cookie over TLS is not Secure";

    const auto plain = run_command(
        {"/usr/bin/curl", "-sS", "--max-time", "5", fmt::format("http://127.0.0.1:{}/healthz", port)}, 10s);
    EXPECT_NE(plain.first, 0) << "plain HTTP was answered on the TLS port: " << plain.second;
    EXPECT_EQ(https({origin + "/healthz"}).first, 0) << "the server stopped serving after a plain request";
    const auto metrics = https({origin + "/metrics"}).second;
    EXPECT_NE(metrics.find(R"(conveyor_http_refused_total{reason="tls_handshake"} 1)"), std::string::npos);
    scheduler.signal(SIGTERM);
    EXPECT_EQ(scheduler.wait(15s), std::optional<int>(0)) << scheduler.log();

    const auto [status, output] =
        run_command({(binary_dir() / "conveyor-scheduler").string(), "--jwt-secret-file", secret_file().string(),
                     "--tls-cert-file", cert, "--tls-key-file", cert, "--http-port", std::to_string(port + 1),
                     "--amqp-url", amqp_url(), "--pg-url", pg_url()},
                    30s);
    EXPECT_EQ(status, 2) << output;
    EXPECT_NE(output.find("TLS key " + cert + " cannot be used"), std::string::npos) << output;
}

}  // namespace
}  // namespace conveyor::testing
