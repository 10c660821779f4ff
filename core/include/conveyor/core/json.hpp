#pragma once

#include <simdjson.h>

#include <boost/json/value.hpp>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

/// The limits every JSON document Conveyor accepts must keep, so that what one reader accepts at the door no other
/// reader later refuses or reads differently.
namespace conveyor::json {

/// How deep a job payload may nest: objects and arrays, the payload itself being level 1 (`{"a":{"b":1}}` is 2).
/// Enforced on every way in (HTTP, CLI, AMQP, conveyor.enqueue() in SQL) and honoured by every reader.
inline constexpr std::size_t kMaxDepth = 32;

struct Limits {
    /// Nesting allowed below the document's root, which is level 1.
    std::size_t max_depth = kMaxDepth;
    /// Whether strings and keys may hold U+0000: PostgreSQL's jsonb and text cannot store it.
    bool allow_nul = true;
};

/// Why a document breaks the limits.
struct Violation {
    enum class Kind {
        duplicate_key,  ///< an object repeats a key: readers differ on which value wins
        too_deep,       ///< nesting past Limits::max_depth
        nul,            ///< U+0000 where Limits::allow_nul is false
    };
    Kind kind;
    /// Names what and where, e.g. `duplicate key "ms" at $.payload`; quotes at most 64 bytes of a key.
    std::string message;
};

/// What makes a parsed document one that not every reader takes the same way, or nothing. Keys are compared
/// unescaped, so "a" and "\u0061" repeat.
[[nodiscard]] std::optional<Violation> check(simdjson::dom::element root, const Limits& limits = {});

/// Parses JSON that Conveyor stored after check() accepted it, into a value to render: nesting up to kMaxDepth and
/// no deeper, so a stored document never meets a reader with a smaller limit. Nothing if the text is not such JSON.
[[nodiscard]] std::optional<boost::json::value> parse_stored(std::string_view text);

}  // namespace conveyor::json
