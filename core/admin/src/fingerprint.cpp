#include "conveyor/admin/fingerprint.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdint>

namespace conveyor::dead_letters {

namespace {

// A quoted value longer than this is more likely an unbalanced quote than a value.
constexpr std::size_t kMaxQuoted = 200;
constexpr std::size_t kMinIdLength = 8;

bool is_token_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '-' || c == '.' || c == '@' ||
           c == '+' || c == '*';
}

bool is_digit(char c) {
    return std::isdigit(static_cast<unsigned char>(c)) != 0;
}

bool looks_like_email(std::string_view token) {
    const auto at = token.find('@');
    return at != std::string_view::npos && at > 0 && token.find('.', at) != std::string_view::npos;
}

/// UUIDs, hashes, hex ids: long runs of hex digits (and dashes) with at least one digit.
bool looks_like_id(std::string_view token) {
    const bool hex = std::all_of(token.begin(), token.end(),
                                 [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0 || c == '-'; });
    return hex && token.size() >= kMinIdLength && std::any_of(token.begin(), token.end(), is_digit);
}

/// A dotted IPv4 address: without this rule it would read as two decimal numbers.
bool looks_like_ipv4(std::string_view token) {
    int groups = 0;
    std::size_t digits = 0;
    for (const char c : token) {
        if (is_digit(c)) {
            ++digits;
        } else if (c == '.' && digits > 0) {
            ++groups;
            digits = 0;
        } else {
            return false;
        }
        if (digits > 3) {
            return false;
        }
    }
    return groups == 3 && digits > 0;
}

/// The token with each number (digits, optionally with a decimal part) replaced by <n>.
void append_without_numbers(std::string& out, std::string_view token) {
    for (std::size_t i = 0; i < token.size();) {
        if (!is_digit(token[i])) {
            out += token[i++];
            continue;
        }
        while (i < token.size() && is_digit(token[i])) {
            ++i;
        }
        if (i + 1 < token.size() && token[i] == '.' && is_digit(token[i + 1])) {
            ++i;
            while (i < token.size() && is_digit(token[i])) {
                ++i;
            }
        }
        out += "<n>";
    }
}

}  // namespace

std::string error_pattern(std::string_view error) {
    std::string out;
    out.reserve(error.size());
    for (std::size_t i = 0; i < error.size();) {
        const char c = error[i];
        if (c == '\'' || c == '"') {
            const auto close = error.find(c, i + 1);
            if (close != std::string_view::npos && close - i <= kMaxQuoted) {
                out += "<str>";
                i = close + 1;
                continue;
            }
        }
        if (is_token_char(c)) {
            auto end = i;
            while (end < error.size() && is_token_char(error[end])) {
                ++end;
            }
            const auto token = error.substr(i, end - i);
            if (looks_like_email(token)) {
                out += "<email>";
            } else if (looks_like_id(token)) {
                out += "<id>";
            } else if (looks_like_ipv4(token)) {
                out += "<ip>";
            } else {
                append_without_numbers(out, token);
            }
            i = end;
            continue;
        }
        if (std::isspace(static_cast<unsigned char>(c)) != 0) {
            if (!out.empty() && out.back() != ' ') {
                out += ' ';
            }
            ++i;
            continue;
        }
        out += c;
        ++i;
    }
    while (!out.empty() && out.back() == ' ') {
        out.pop_back();
    }
    return out;
}

std::string error_fingerprint(std::string_view pattern) {
    // FNV-1a: stable across builds and platforms, which a fingerprint typed on the command line needs.
    std::uint64_t hash = 14695981039346656037ULL;
    for (const char c : pattern) {
        hash ^= static_cast<unsigned char>(c);
        hash *= 1099511628211ULL;
    }
    return fmt::format("{:016x}", hash);
}

}  // namespace conveyor::dead_letters
