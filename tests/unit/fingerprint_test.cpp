#include "conveyor/admin/fingerprint.hpp"

#include <gtest/gtest.h>

namespace conveyor::dead_letters {
namespace {

TEST(ErrorPattern, IdsNumbersQuotedValuesAndAddressesAreNormalisedAway) {
    EXPECT_EQ(error_pattern("payment gateway answered 503 for order bench-4711-3 after 10000 ms"),
              "payment gateway answered <n> for order bench-<n>-<n> after <n> ms");
    EXPECT_EQ(error_pattern("job 0b8e6f2a-1c3d-4e5f-9a7b-1234567890ab timed out after 2.5s"),
              "job <id> timed out after <n>s");
    EXPECT_EQ(error_pattern("emails.send to a***@example.com: 550 mailbox 'x@y.z' unavailable"),
              "emails.send to <email>: <n> mailbox <str> unavailable");
    EXPECT_EQ(error_pattern(R"(invalid payload for diag.sleep: "ms" must be an integer)"),
              "invalid payload for diag.sleep: <str> must be an integer");
    EXPECT_EQ(error_pattern("  spaces   collapse\tand\ntrim  "), "spaces collapse and trim");
    EXPECT_EQ(error_pattern("digest deadbeefcafe1234 mismatch"), "digest <id> mismatch");
    // Words are not ids, even when they are made of hex letters.
    EXPECT_EQ(error_pattern("deadbeef facade"), "deadbeef facade");
    EXPECT_EQ(error_pattern("an unbalanced 'quote stays"), "an unbalanced 'quote stays");
    EXPECT_EQ(error_pattern("cannot connect to 127.0.0.1:41603: Connection refused"),
              "cannot connect to <ip>:<n>: Connection refused");
    EXPECT_EQ(error_pattern("version 1.2.3 of 10.0.0"), "version <n>.<n> of <n>.<n>");
    EXPECT_EQ(error_pattern(""), "");
}

TEST(ErrorPattern, TheSameFailureOfDifferentJobsHasOneFingerprint) {
    const auto first = error_fingerprint(error_pattern("gateway timeout for order 17 (key conveyor-order-17)"));
    const auto second = error_fingerprint(error_pattern("gateway timeout for order 9912 (key conveyor-order-9912)"));
    const auto other = error_fingerprint(error_pattern("gateway refused the charge for order 17"));
    EXPECT_EQ(first, second);
    EXPECT_NE(first, other);
    EXPECT_EQ(first.size(), 16U);
    // Stable: a fingerprint printed today must select the same group tomorrow.
    EXPECT_EQ(error_fingerprint(""), "cbf29ce484222325");
}

}  // namespace
}  // namespace conveyor::dead_letters
