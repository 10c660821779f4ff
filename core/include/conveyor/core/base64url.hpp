#pragma once

#include <optional>
#include <string>
#include <string_view>

/// RFC 4648 §5 base64url without padding, as JSON Web Tokens (RFC 7515) and the console's cookies carry bytes.
namespace conveyor::base64url {

[[nodiscard]] std::string encode(std::string_view bytes);
/// The bytes `text` encodes; nothing for a character outside the alphabet or a length no encoding has.
[[nodiscard]] std::optional<std::string> decode(std::string_view text);
/// Whether `c` belongs to the alphabet.
[[nodiscard]] bool is_alphabet(char c) noexcept;

}  // namespace conveyor::base64url
