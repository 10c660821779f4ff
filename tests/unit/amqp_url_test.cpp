#include <gtest/gtest.h>

#include "conveyor/core/amqp.hpp"

namespace conveyor::amqp {
namespace {

TEST(AmqpUrl, ParsesTheLocalDefault) {
    const auto url = Url::parse("amqp://guest:guest@127.0.0.1:5672/%2f");
    EXPECT_FALSE(url.tls);
    EXPECT_EQ(url.endpoints, (std::vector<Endpoint>{{"127.0.0.1", 5672}}));
    EXPECT_EQ(url.user, "guest");
    EXPECT_EQ(url.password, "guest");
    EXPECT_EQ(url.vhost, "/");
}

TEST(AmqpUrl, AmqpsDefaultsToPort5671AndDecodesTheVhost) {
    const auto url = Url::parse("amqps://app:s%40cret@broker.internal/orders%2Fprod");
    EXPECT_TRUE(url.tls);
    EXPECT_EQ(url.endpoints, (std::vector<Endpoint>{{"broker.internal", 5671}}));
    EXPECT_EQ(url.password, "s@cret");
    EXPECT_EQ(url.vhost, "orders/prod");
}

TEST(AmqpUrl, MissingPathMeansTheDefaultVhost) {
    EXPECT_EQ(Url::parse("amqp://localhost").vhost, "/");
}

TEST(AmqpUrl, RejectsOtherSchemesWithAClearError) {
    try {
        (void)Url::parse("http://localhost:5672/");
        FAIL() << "expected an exception";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("amqp or amqps"), std::string::npos) << e.what();
    }
    EXPECT_THROW((void)Url::parse("not a url"), std::invalid_argument);
}

TEST(AmqpUrl, RedactedNeverShowsThePassword) {
    const auto url = Url::parse("amqp://app:topsecret@host:5673/v");
    EXPECT_EQ(url.redacted(), "amqp://app:***@host:5673/v");
}

TEST(AmqpUrl, ACommaSeparatedListOfHostsNamesTheNodesOfACluster) {
    const auto url = Url::parse("amqps://app:s%40cret@node1:5681,node2,[::1]:5683/orders");
    EXPECT_TRUE(url.tls);
    EXPECT_EQ(url.endpoints, (std::vector<Endpoint>{{"node1", 5681}, {"node2", 5671}, {"::1", 5683}}));
    EXPECT_EQ(url.user, "app");
    EXPECT_EQ(url.password, "s@cret");
    EXPECT_EQ(url.vhost, "orders");
    EXPECT_EQ(url.redacted(), "amqps://app:***@node1:5681,node2:5671,[::1]:5683/orders");
    EXPECT_EQ(url.redacted(url.endpoints[1]), "amqps://app:***@node2:5671/orders");
}

TEST(AmqpUrl, AnEmptyOrBadHostInTheListSaysSo) {
    try {
        (void)Url::parse("amqp://guest:guest@node1:5672,,node3:5672/%2f");
        FAIL() << "expected an exception";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("empty host"), std::string::npos) << e.what();
    }
    EXPECT_THROW((void)Url::parse("amqp://guest:guest@node1:5672,node2:0/%2f"), std::invalid_argument);
    EXPECT_THROW((void)Url::parse("amqp://guest:guest@node1:5672,node2:x/%2f"), std::invalid_argument);
}

TEST(Headers, SetReplacesAndFindFinds) {
    Headers headers;
    set_header(headers, "x-a", std::int64_t{1});
    set_header(headers, "x-a", std::string("two"));
    ASSERT_EQ(headers.size(), 1U);
    const auto* value = find_header(headers, "x-a");
    ASSERT_NE(value, nullptr);
    EXPECT_EQ(std::get<std::string>(*value), "two");
    EXPECT_EQ(find_header(headers, "x-b"), nullptr);
}

}  // namespace
}  // namespace conveyor::amqp
