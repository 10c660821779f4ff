#include "conveyor/core/redaction.hpp"

#include <gtest/gtest.h>

namespace conveyor {
namespace {

TEST(RedactedUrlTest, MasksTheUserinfoPassword) {
    EXPECT_EQ(redacted_url("postgresql://app:s3cret@db:5432/conveyor"), "postgresql://app:***@db:5432/conveyor");
    EXPECT_EQ(redacted_url("amqps://guest:guest@localhost:5671/%2f"), "amqps://guest:***@localhost:5671/%2f");
    EXPECT_EQ(redacted_url("postgres://app:p%40ss@db/x"), "postgres://app:***@db/x");
    // An unencoded '@' in the password: everything up to the last '@' of the authority is userinfo.
    EXPECT_EQ(redacted_url("postgresql://app:p@ss@db/x"), "postgresql://app:***@db/x");
    EXPECT_EQ(redacted_url("postgresql://:secret@db"), "postgresql://:***@db");
}

TEST(RedactedUrlTest, KeepsWhatHoldsNoSecret) {
    EXPECT_EQ(redacted_url("postgresql://postgres@127.0.0.1:5432/conveyor"),
              "postgresql://postgres@127.0.0.1:5432/conveyor");
    EXPECT_EQ(redacted_url("postgresql:///conveyor?host=/run/pg&sslmode=require"),
              "postgresql:///conveyor?host=/run/pg&sslmode=require");
    EXPECT_EQ(redacted_url("dbname=conveyor host=db"), "dbname=conveyor host=db");
    EXPECT_EQ(redacted_url(""), "");
}

TEST(RedactedUrlTest, MasksPasswordQueryParametersHoweverSpelt) {
    EXPECT_EQ(redacted_url("postgresql://app@db/x?password=s3cret"), "postgresql://app@db/x?password=***");
    EXPECT_EQ(redacted_url("postgresql://db/x?sslmode=require&sslpassword=k3y&password=pw#frag"),
              "postgresql://db/x?sslmode=require&sslpassword=***&password=***#frag");
    EXPECT_EQ(redacted_url("postgresql://db/x?PassWord=pw"), "postgresql://db/x?PassWord=***");
    // libpq percent-decodes parameter names.
    EXPECT_EQ(redacted_url("postgresql://db/x?pass%77ord=pw"), "postgresql://db/x?pass%77ord=***");
    EXPECT_EQ(redacted_url("postgresql://u:a@db/x?password=b"), "postgresql://u:***@db/x?password=***");
}

TEST(RedactedUrlTest, MasksEveryHostOfAMultiHostUrl) {
    EXPECT_EQ(redacted_url("postgresql://app:pw@h1:5432,h2:5433/conveyor?target_session_attrs=read-write"),
              "postgresql://app:***@h1:5432,h2:5433/conveyor?target_session_attrs=read-write");
    EXPECT_EQ(redacted_url("amqp://u:a@h1:5672/%2f,amqp://u:b@h2:5672/%2f,amqps://v:c@h3/%2f"),
              "amqp://u:***@h1:5672/%2f,amqp://u:***@h2:5672/%2f,amqps://v:***@h3/%2f");
    EXPECT_EQ(redacted_url("amqp://u:a@h1,amqp://u:b@h2"), "amqp://u:***@h1,amqp://u:***@h2");
}

TEST(RedactedUrlTest, MasksKeywordFormValuesQuotedOrNot) {
    EXPECT_EQ(redacted_url("host=db password=s3cret dbname=x"), "host=db password=*** dbname=x");
    EXPECT_EQ(redacted_url("host=db password = 'se cr\\'et' sslpassword=k"), "host=db password = *** sslpassword=***");
    EXPECT_EQ(redacted_url("password=only"), "password=***");
    EXPECT_EQ(redacted_url("host=db  password='' port=5"), "host=db  password=*** port=5");
}

}  // namespace
}  // namespace conveyor
