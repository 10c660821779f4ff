#include <gtest/gtest.h>
#include <stdlib.h>

#include <sstream>

#include "conveyor/worker/settings.hpp"

namespace conveyor::worker {
namespace {

/// Sets an environment variable for one test and restores the previous state after it.
class ScopedEnv {
  public:
    ScopedEnv(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) {
            old_ = old;
        }
        ::setenv(name, value, 1);
    }
    ~ScopedEnv() {
        if (old_) {
            ::setenv(name_, old_->c_str(), 1);
        } else {
            ::unsetenv(name_);
        }
    }

  private:
    const char* name_;
    std::optional<std::string> old_;
};

struct Parsed {
    ParseResult result;
    std::string out;
    std::string err;
};

Parsed parse(std::vector<const char*> args) {
    args.insert(args.begin(), "conveyor-worker");
    std::ostringstream out;
    std::ostringstream err;
    auto result = parse_worker_settings(args, out, err);
    return {std::move(result), out.str(), err.str()};
}

TEST(WorkerSettings, DefaultsWorkAgainstTheLocalStack) {
    const auto parsed = parse({});
    ASSERT_TRUE(parsed.result.settings) << parsed.err;
    const auto& settings = *parsed.result.settings;
    EXPECT_EQ(settings.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
    EXPECT_EQ(settings.families,
              (std::vector<std::string>{"orders", "inventory", "payments", "emails", "projections", "diag"}));
    EXPECT_EQ(settings.http_port, 9464);
    EXPECT_EQ(settings.prefetch, 2 * settings.concurrency);
    EXPECT_EQ(settings.priority_weights, (std::array<unsigned, 3>{6, 3, 1}));
    EXPECT_EQ(settings.high_priority_reserved, 0U);
    EXPECT_GE(settings.threads, 1U);
    EXPECT_FALSE(settings.name.empty());
}

TEST(WorkerSettings, FlagsSetEveryOption) {
    const auto parsed = parse({"--queues", "diag,orders", "--concurrency", "7", "--prefetch", "3", "--threads", "1",
                               "--job-timeout", "1500ms", "--shutdown-grace", "2m", "--http-port", "19999",
                               "--max-message-bytes", "2048", "--name", "w-1"});
    ASSERT_TRUE(parsed.result.settings) << parsed.err;
    const auto& settings = *parsed.result.settings;
    EXPECT_EQ(settings.families, (std::vector<std::string>{"diag", "orders"}));
    EXPECT_EQ(settings.concurrency, 7U);
    EXPECT_EQ(settings.prefetch, 3U);
    EXPECT_EQ(settings.threads, 1U);
    EXPECT_EQ(settings.job_timeout, std::chrono::milliseconds(1500));
    EXPECT_EQ(settings.shutdown_grace, std::chrono::minutes(2));
    EXPECT_EQ(settings.http_port, 19999);
    EXPECT_EQ(settings.max_message_bytes, 2048U);
    EXPECT_EQ(settings.name, "w-1");
}

TEST(WorkerSettings, ThePrefetchIsSplitAmongTheQueuesSoTheirSumStaysWithinIt) {
    WorkerSettings settings;
    settings.families = {"orders", "payments", "emails", "projections", "diag"};
    settings.prefetch = 102;
    EXPECT_EQ(prefetch_shares(settings), (std::vector<std::uint16_t>{21, 21, 20, 20, 20}));
    settings.prefetch = 3;
    EXPECT_EQ(prefetch_shares(settings), (std::vector<std::uint16_t>{1, 1, 1, 1, 1})) << "each queue gets one at least";
    settings.families = {"diag"};
    settings.prefetch = 200'000;
    EXPECT_EQ(prefetch_shares(settings), (std::vector<std::uint16_t>{65'535})) << "AMQP's prefetch is 16 bits";
    const auto parsed = parse({"--history", "off", "--history-retention", "30d", "--history-buffer", "500"});
    ASSERT_TRUE(parsed.result.settings) << parsed.err;
    EXPECT_FALSE(parsed.result.settings->history);
    EXPECT_EQ(parsed.result.settings->history_retention, std::chrono::hours(24 * 30));
    EXPECT_EQ(parsed.result.settings->history_buffer, 500U);
    EXPECT_FALSE(parse({"--history", "maybe"}).result.settings);
    EXPECT_FALSE(parse({"--history-retention", "10m"}).result.settings);
}

TEST(WorkerSettings, GroupCommitIsOnByDefaultAndEachOfItsSettingsCanBeChanged) {
    const auto defaults = parse({});
    ASSERT_TRUE(defaults.result.settings) << defaults.err;
    EXPECT_TRUE(defaults.result.settings->group_commit);
    EXPECT_EQ(defaults.result.settings->group_commit_max, 64U);
    EXPECT_EQ(defaults.result.settings->group_commit_lanes, 2U);
    EXPECT_EQ(defaults.result.settings->group_commit_open, 1U);
    EXPECT_EQ(defaults.result.settings->group_commit_wait, std::chrono::microseconds(0));
    ScopedEnv off("CONVEYOR_GROUP_COMMIT", "off");
    const auto parsed = parse({"--group-commit-max", "16", "--group-commit-lanes", "4", "--group-commit-open", "2",
                               "--group-commit-wait", "2ms"});
    ASSERT_TRUE(parsed.result.settings) << parsed.err;
    EXPECT_FALSE(parsed.result.settings->group_commit);
    EXPECT_EQ(parsed.result.settings->group_commit_max, 16U);
    EXPECT_EQ(parsed.result.settings->group_commit_lanes, 4U);
    EXPECT_EQ(parsed.result.settings->group_commit_open, 2U);
    EXPECT_EQ(parsed.result.settings->group_commit_wait, std::chrono::milliseconds(2));
}

TEST(WorkerSettings, EnvironmentIsReadAndAFlagWins) {
    ScopedEnv concurrency("CONVEYOR_CONCURRENCY", "42");
    ScopedEnv grace("CONVEYOR_SHUTDOWN_GRACE", "5s");
    ScopedEnv port("CONVEYOR_HTTP_PORT", "19000");
    const auto parsed = parse({"--http-port", "19001"});
    ASSERT_TRUE(parsed.result.settings) << parsed.err;
    EXPECT_EQ(parsed.result.settings->concurrency, 42U);
    EXPECT_EQ(parsed.result.settings->shutdown_grace, std::chrono::seconds(5));
    EXPECT_EQ(parsed.result.settings->http_port, 19001);
}

TEST(WorkerSettings, BadValuesExitNonZeroSayingWhatIsWrong) {
    const std::vector<std::pair<std::vector<const char*>, std::string>> cases{
        {{"--queues", "diag,billing"}, "unknown job family 'billing'"},
        {{"--concurrency", "0"}, "--concurrency"},
        {{"--job-timeout", "soon"}, "invalid duration 'soon'"},
        {{"--amqp-url", "http://x"}, "amqp or amqps"},
        {{"--log-level", "loud"}, "--log-level"},
        {{"--no-such-flag"}, "--no-such-flag"},
        {{"--retry", "diag.fail"}, "expected TYPE=attempts:N"},
        {{"--retry", "diag.fail=tries:3"}, "unknown field 'tries'"},
        {{"--retry", "diag.fail=attempts:0"}, "invalid attempts '0'"},
        {{"--retry", "Diag=attempts:2"}, "neither a job type nor 'family.*'"},
        {{"--retry-base-delay", "10s", "--retry-max-delay", "1s"}, "must not be shorter"},
        {{"--priority-weights", "6:3"}, "expected high:normal:low"},
        {{"--priority-weights", "6:0:1"}, "expected high:normal:low"},
        {{"--concurrency", "4", "--high-priority-reserved", "4"}, "must be less than --concurrency (4)"},
        {{"--group-commit", "maybe"}, "--group-commit"},
        {{"--group-commit-max", "65"}, "--group-commit-max"},
        {{"--group-commit-wait", "1s"}, "--group-commit-wait must be at most 100ms"},
        {{"--group-commit-open", "3"}, "--group-commit-open (3) must not exceed --group-commit-lanes (2)"},
        {{"--group-commit-lanes", "5", "--pg-pool-size", "5"}, "must be less than --pg-pool-size (5)"},
    };
    for (const auto& [args, expected] : cases) {
        const auto parsed = parse(args);
        EXPECT_FALSE(parsed.result.settings) << expected;
        EXPECT_EQ(parsed.result.exit_code, 2) << expected;
        EXPECT_NE(parsed.err.find(expected), std::string::npos) << "stderr was: " << parsed.err;
    }
}

TEST(WorkerSettings, RetryPolicyComesFromDefaultsTheTypeAndOverrides) {
    ScopedEnv overrides("CONVEYOR_RETRY", "diag.*=attempts:4,base:2s;diag.fail=cap:30s");
    const auto parsed = parse({"--retry-max-attempts", "6", "--retry-max-delay", "10m"});
    ASSERT_TRUE(parsed.result.settings) << parsed.err;
    const auto& settings = *parsed.result.settings;
    EXPECT_EQ(settings.retry.max_attempts, 6U);
    EXPECT_EQ(settings.retry.base_delay, std::chrono::seconds(1));
    EXPECT_EQ(settings.retry.max_delay, std::chrono::minutes(10));
    ASSERT_EQ(settings.retry_overrides.size(), 2U);

    JobDefinition fail{"diag.fail", {}, {}};
    const auto fail_policy = effective_retry_policy(settings, fail);
    EXPECT_EQ(fail_policy.max_attempts, 4U);
    EXPECT_EQ(fail_policy.base_delay, std::chrono::seconds(2));
    EXPECT_EQ(fail_policy.max_delay, std::chrono::seconds(30));

    JobDefinition own{"orders.place", {}, {}};
    own.options.retry = RetryPolicy{};
    own.options.retry->max_attempts = 3;
    EXPECT_EQ(effective_retry_policy(settings, own).max_attempts, 3U);
    JobDefinition plain{"orders.cancel", {}, {}};
    EXPECT_EQ(effective_retry_policy(settings, plain).max_attempts, 6U);
}

TEST(WorkerSettings, HelpListsTheEnvironmentAndHidesSecrets) {
    ScopedEnv url("CONVEYOR_AMQP_URL", "amqp://app:hunter2@broker:5672/%2f");
    const auto parsed = parse({"--help"});
    EXPECT_FALSE(parsed.result.settings);
    EXPECT_EQ(parsed.result.exit_code, 0);
    EXPECT_NE(parsed.out.find("CONVEYOR_AMQP_URL"), std::string::npos);
    EXPECT_NE(parsed.out.find("CONVEYOR_SHUTDOWN_GRACE"), std::string::npos);
    EXPECT_EQ(parsed.out.find("hunter2"), std::string::npos) << parsed.out;
    EXPECT_EQ(parsed.out.find("guest:guest"), std::string::npos) << parsed.out;
}

}  // namespace
}  // namespace conveyor::worker
