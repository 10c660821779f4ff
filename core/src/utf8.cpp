#include "conveyor/core/utf8.hpp"

#include <algorithm>

namespace conveyor::utf8 {

std::size_t sequence_length(std::string_view text, std::size_t at) noexcept {
    const auto byte = [&](std::size_t offset) {
        return at + offset < text.size() ? static_cast<unsigned char>(text[at + offset]) : 0U;
    };
    const auto lead = byte(0);
    std::size_t length = 0;
    unsigned low = 0x80;  // the second byte's range, narrowed for the leads that could be overlong or too large
    unsigned high = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
        length = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        length = 3;
        low = lead == 0xE0 ? 0xA0 : low;
        high = lead == 0xED ? 0x9F : high;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        length = 4;
        low = lead == 0xF0 ? 0x90 : low;
        high = lead == 0xF4 ? 0x8F : high;
    } else {
        return 0;
    }
    if (byte(1) < low || byte(1) > high) {
        return 0;
    }
    for (std::size_t offset = 2; offset < length; ++offset) {
        if (byte(offset) < 0x80 || byte(offset) > 0xBF) {
            return 0;
        }
    }
    return length;
}

std::string sanitized(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t at = 0; at < text.size();) {
        if (static_cast<unsigned char>(text[at]) < 0x80) {
            out += text[at++];
        } else if (const auto length = sequence_length(text, at); length > 0) {
            out.append(text.substr(at, length));
            at += length;
        } else {
            out.append(kReplacement);
            ++at;
        }
    }
    return out;
}

std::string postgres_text(std::string_view text) {
    auto out = sanitized(text);
    std::replace(out.begin(), out.end(), '\0', ' ');
    return out;
}

}  // namespace conveyor::utf8
