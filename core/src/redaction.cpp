#include "conveyor/core/redaction.hpp"

#include <algorithm>
#include <cctype>
#include <vector>

namespace conveyor {

namespace {

constexpr std::string_view kMask = "***";

bool is_scheme_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '+' || c == '-' || c == '.';
}

/// The length of "scheme://" at the start of `text`, or 0.
std::size_t scheme_length(std::string_view text) {
    if (text.empty() || std::isalpha(static_cast<unsigned char>(text.front())) == 0) {
        return 0;
    }
    std::size_t end = 1;
    while (end < text.size() && is_scheme_char(text[end])) {
        ++end;
    }
    return text.substr(end).starts_with("://") ? end + 3 : 0;
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/// Whether a parameter name, percent-decoded (as libpq decodes URI query names), names a password.
bool names_password(std::string_view name) {
    std::string decoded;
    for (std::size_t i = 0; i < name.size(); ++i) {
        char c = name[i];
        if (c == '%' && i + 2 < name.size() && hex_value(name[i + 1]) >= 0 && hex_value(name[i + 2]) >= 0) {
            c = static_cast<char>(hex_value(name[i + 1]) * 16 + hex_value(name[i + 2]));
            i += 2;
        }
        decoded += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return decoded.ends_with("password");
}

/// "name=value&name=value", each value whose name is a password's masked.
std::string redacted_query(std::string_view query) {
    std::string out;
    while (true) {
        const auto amp = query.find('&');
        const auto parameter = query.substr(0, amp);
        const auto equals = parameter.find('=');
        if (equals != std::string_view::npos && names_password(parameter.substr(0, equals))) {
            out.append(parameter.substr(0, equals + 1)).append(kMask);
        } else {
            out.append(parameter);
        }
        if (amp == std::string_view::npos) {
            return out;
        }
        out += '&';
        query.remove_prefix(amp + 1);
    }
}

/// One URI: "scheme://[user[:password]@]hosts[/path][?query][#fragment]".
std::string redacted_uri(std::string_view uri) {
    const auto authority = scheme_length(uri);
    std::string out(uri.substr(0, authority));
    const auto authority_end = std::min(uri.find_first_of("/?#", authority), uri.size());
    // The last '@': a password with an unencoded '@' in it is still all masked.
    const auto at = uri.substr(0, authority_end).rfind('@');
    std::size_t rest = authority;
    if (at != std::string_view::npos && at >= authority) {
        const auto userinfo = uri.substr(authority, at - authority);
        const auto colon = userinfo.find(':');
        out.append(userinfo.substr(0, colon));
        if (colon != std::string_view::npos) {
            out.append(":").append(kMask);
        }
        rest = at;
    }
    const auto question = uri.find('?', rest);
    if (question == std::string_view::npos) {
        return out.append(uri.substr(rest));
    }
    const auto hash = std::min(uri.find('#', question), uri.size());
    out.append(uri.substr(rest, question + 1 - rest));
    out.append(redacted_query(uri.substr(question + 1, hash - question - 1)));
    return out.append(uri.substr(hash));
}

/// Where each URI of a comma-separated list starts: at 0 and after each ',' that a "scheme://" follows.
std::vector<std::size_t> uri_starts(std::string_view text) {
    std::vector<std::size_t> starts{0};
    for (auto comma = text.find(','); comma != std::string_view::npos; comma = text.find(',', comma + 1)) {
        if (scheme_length(text.substr(comma + 1)) > 0) {
            starts.push_back(comma + 1);
        }
    }
    return starts;
}

/// libpq's "keyword = value ..." form; a value is a run of non-blanks or a single-quoted string with backslash
/// escapes.
std::string redacted_keywords(std::string_view text) {
    std::string out;
    std::size_t i = 0;
    const auto blank = [&](std::size_t at) {
        return at < text.size() && std::isspace(static_cast<unsigned char>(text[at])) != 0;
    };
    while (i < text.size()) {
        const auto key_start = i;
        while (i < text.size() && text[i] != '=' && !blank(i)) {
            ++i;
        }
        const auto key = text.substr(key_start, i - key_start);
        while (blank(i) || (i < text.size() && text[i] == '=')) {
            ++i;
        }
        const auto value_start = i;
        if (i < text.size() && text[i] == '\'') {
            for (++i; i < text.size() && text[i] != '\''; ++i) {
                i += text[i] == '\\' ? 1 : 0;
            }
            i = std::min(i + 1, text.size());
        } else {
            while (i < text.size() && !blank(i)) {
                ++i;
            }
        }
        out.append(text.substr(key_start, value_start - key_start));
        out.append(names_password(key) && i > value_start ? kMask : text.substr(value_start, i - value_start));
        while (blank(i)) {
            out += text[i++];
        }
    }
    return out;
}

}  // namespace

std::string redacted_url(std::string_view url) {
    if (scheme_length(url) == 0) {
        return redacted_keywords(url);
    }
    const auto starts = uri_starts(url);
    std::string out;
    for (std::size_t i = 0; i < starts.size(); ++i) {
        const auto end = i + 1 < starts.size() ? starts[i + 1] - 1 : url.size();
        if (i > 0) {
            out += ',';
        }
        out += redacted_uri(url.substr(starts[i], end - starts[i]));
    }
    return out;
}

}  // namespace conveyor
