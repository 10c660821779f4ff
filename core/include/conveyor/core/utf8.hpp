#pragma once

#include <cstddef>
#include <string>
#include <string_view>

/// Well-formed UTF-8 (RFC 3629), for text that comes from the wire and goes where invalid bytes are refused or
/// break the format: PostgreSQL text, JSON log lines.
namespace conveyor::utf8 {

/// U+FFFD REPLACEMENT CHARACTER, encoded.
inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

/// The length of the well-formed sequence (no overlong forms, no surrogates, nothing past U+10FFFF) that starts
/// at text[at], or 0 if none does.
[[nodiscard]] std::size_t sequence_length(std::string_view text, std::size_t at) noexcept;

/// `text` with every byte that is not part of a well-formed sequence replaced by U+FFFD.
[[nodiscard]] std::string sanitized(std::string_view text);

/// Text PostgreSQL's text type accepts: sanitized(), and NUL (which it cannot hold) as a space.
[[nodiscard]] std::string postgres_text(std::string_view text);

}  // namespace conveyor::utf8
