#include "conveyor/core/json.hpp"

#include <gtest/gtest.h>

#include <string>

namespace conveyor::json {
namespace {

class JsonCheckTest : public ::testing::Test {
  protected:
    std::optional<Violation> check_text(const std::string& text, const Limits& limits = {}) {
        simdjson::dom::element root;
        const auto error = parser_.parse(text).get(root);
        EXPECT_EQ(error, simdjson::SUCCESS) << text;
        return check(root, limits);
    }

    simdjson::dom::parser parser_;
};

/// An object nested `levels` deep, alternating objects and arrays: {"a":[{"a":[…]}]}.
std::string nested(std::size_t levels) {
    std::string open, close;
    for (std::size_t level = 1; level <= levels; ++level) {
        if (level % 2 == 1) {
            open += level == levels ? "{" : R"({"a":)";
            close.insert(0, "}");
        } else {
            open += "[";
            close.insert(0, "]");
        }
    }
    return open + close;
}

TEST_F(JsonCheckTest, AcceptsOrdinaryDocuments) {
    EXPECT_EQ(check_text(R"({"order_id":"o-1","items":[{"sku":"a","qty":2}],"note":null})"), std::nullopt);
    EXPECT_EQ(check_text("[]"), std::nullopt);
    EXPECT_EQ(check_text("42"), std::nullopt);
}

TEST_F(JsonCheckTest, FindsRepeatedKeysAtAnyDepthAndNamesThem) {
    const auto top = check_text(R"({"ms":1,"ms":"x"})");
    ASSERT_TRUE(top);
    EXPECT_EQ(top->kind, Violation::Kind::duplicate_key);
    EXPECT_EQ(top->message, R"(duplicate key "ms" at $)");

    const auto nested_in_array = check_text(R"({"jobs":[{"type":"a"},{"payload":{"x":1,"y":2,"x":3}}]})");
    ASSERT_TRUE(nested_in_array);
    EXPECT_EQ(nested_in_array->message, R"(duplicate key "x" at $.jobs[1].payload)");
}

TEST_F(JsonCheckTest, ComparesKeysUnescaped) {
    EXPECT_TRUE(check_text(R"({"a":1,"\u0061":2})"));
    EXPECT_EQ(check_text(R"({"a":1,"A":2,"a ":3})"), std::nullopt);
}

TEST_F(JsonCheckTest, FindsARepeatedKeyAmongMany) {
    std::string text = "{";
    for (int i = 0; i < 200; ++i) {
        text += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
    }
    EXPECT_EQ(check_text(text + "\"k0\":0}")->message, R"(duplicate key "k0" at $)");
    EXPECT_EQ(check_text(text + "\"k200\":0}"), std::nullopt);
}

TEST_F(JsonCheckTest, CountsObjectsAndArraysAlikeUpToTheLimit) {
    EXPECT_EQ(check_text(nested(kMaxDepth)), std::nullopt);
    const auto deep = check_text(nested(kMaxDepth + 1));
    ASSERT_TRUE(deep);
    EXPECT_EQ(deep->kind, Violation::Kind::too_deep);
    EXPECT_NE(deep->message.find("deeper than 32 levels"), std::string::npos) << deep->message;
    EXPECT_EQ(check_text(nested(3), {.max_depth = 2})->kind, Violation::Kind::too_deep);
    EXPECT_EQ(check_text(nested(200), {.max_depth = 1000}), std::nullopt);
}

TEST_F(JsonCheckTest, RefusesNulOnlyWhenAskedTo) {
    EXPECT_EQ(check_text(R"({"a":"x\u0000y"})"), std::nullopt);
    const auto in_value = check_text(R"({"a":["x\u0000y"]})", {.allow_nul = false});
    ASSERT_TRUE(in_value);
    EXPECT_EQ(in_value->kind, Violation::Kind::nul);
    EXPECT_EQ(in_value->message, "a string at $.a[0] holds U+0000, which cannot be stored");
    EXPECT_EQ(check_text(R"({"a\u0000":1})", {.allow_nul = false})->kind, Violation::Kind::nul);
}

TEST_F(JsonCheckTest, QuotesAtMost64BytesOfAKeyOnACharacterBoundary) {
    const std::string key = std::string(63, 'k') + "\xC3\xA9" + std::string(100, 'z');
    const auto repeated = check_text("{\"" + key + "\":1,\"" + key + "\":2}");
    ASSERT_TRUE(repeated);
    EXPECT_EQ(repeated->message, "duplicate key \"" + std::string(63, 'k') + "…\" at $");
}

TEST(JsonParseStoredTest, ParsesWithinTheDepthLimitOnly) {
    const auto shallow = parse_stored(nested(kMaxDepth));
    ASSERT_TRUE(shallow);
    EXPECT_TRUE(shallow->is_object());
    EXPECT_EQ(parse_stored(nested(kMaxDepth + 1)), std::nullopt);
    EXPECT_EQ(parse_stored("{not json"), std::nullopt);
    EXPECT_EQ(parse_stored(R"({"a":1})")->as_object().at("a").as_int64(), 1);
}

}  // namespace
}  // namespace conveyor::json
