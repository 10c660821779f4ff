#pragma once

#include <string>
#include <string_view>

namespace conveyor::dead_letters {

/// An error message with what varies between jobs that failed the same way replaced by placeholders: UUIDs and long
/// hex strings (<id>), email addresses (<email>), quoted values (<str>), numbers (<n>), so "order 4711: gateway
/// timed out after 10000 ms" and "order 4712: gateway timed out after 10003 ms" share one pattern.
[[nodiscard]] std::string error_pattern(std::string_view error);

/// A short stable hash of error_pattern (16 hex digits), for grouping and for naming a group on the command line.
[[nodiscard]] std::string error_fingerprint(std::string_view pattern);

}  // namespace conveyor::dead_letters
