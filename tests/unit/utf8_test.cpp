#include "conveyor/core/utf8.hpp"

#include <gtest/gtest.h>

namespace conveyor {
namespace {

TEST(Utf8, WellFormedTextIsKeptByteForByte) {
    const std::string text = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa6 plain";
    EXPECT_EQ(utf8::sanitized(text), text);
}

TEST(Utf8, EachBadByteBecomesOneReplacementCharacter) {
    // A stray continuation, 0xff, an overlong '/', a surrogate (PostgreSQL refuses both), a code point past
    // U+10FFFF and a sequence cut off at the end.
    EXPECT_EQ(utf8::sanitized("a\x80z"), "a\ufffdz");
    EXPECT_EQ(utf8::sanitized("\xff"), "\ufffd");
    EXPECT_EQ(utf8::sanitized("\xc0\xaf"), "\ufffd\ufffd");
    EXPECT_EQ(utf8::sanitized("\xed\xa0\x80"), "\ufffd\ufffd\ufffd");
    EXPECT_EQ(utf8::sanitized("\xf4\x90\x80\x80"), "\ufffd\ufffd\ufffd\ufffd");
    EXPECT_EQ(utf8::sanitized("ok \xe2\x82"), "ok \ufffd\ufffd");
}

}  // namespace
}  // namespace conveyor
