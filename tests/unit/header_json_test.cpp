#include "conveyor/core/header_json.hpp"

#include <gtest/gtest.h>

#include <boost/json/serialize.hpp>
#include <limits>

namespace conveyor::amqp {
namespace {

TEST(HeaderJson, PropertiesComeBackAsTheyWere) {
    Properties properties;
    properties.content_type = "application/json";
    properties.message_id = "job-1";
    properties.correlation_id = "order-7";
    properties.timestamp = 1'700'000'000;
    set_header(properties.headers, "x-conveyor-attempt", std::int64_t{3});
    set_header(properties.headers, "x-conveyor-priority", std::string("high"));
    set_header(properties.headers, "x-flag", true);
    set_header(properties.headers, "x-ratio", 0.25);
    const auto back = properties_from_json(boost::json::serialize(properties_to_json(properties)));
    EXPECT_EQ(back.content_type, "application/json");
    EXPECT_EQ(back.message_id, "job-1");
    EXPECT_EQ(back.correlation_id, "order-7");
    EXPECT_EQ(back.timestamp, std::optional<std::uint64_t>(1'700'000'000));
    EXPECT_EQ(back.delivery_mode, 2);
    EXPECT_EQ(back.headers, properties.headers);
}

TEST(HeaderJson, TextBecomesWhatPostgresHoldsAndNonFiniteNumbersAreDropped) {
    Headers headers;
    set_header(headers, "x-bytes", std::string("a\0b\xff", 4));
    set_header(headers, "x-nan", std::numeric_limits<double>::quiet_NaN());
    const auto back = headers_from_json(boost::json::serialize(headers_to_json(headers)));
    EXPECT_EQ(find_text_header(back, "x-bytes"), "a b\xEF\xBF\xBD");
    EXPECT_EQ(find_header(back, "x-nan"), nullptr);
    EXPECT_TRUE(headers_from_json("not json").empty());
}

}  // namespace
}  // namespace conveyor::amqp
