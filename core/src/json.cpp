#include "conveyor/core/json.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/json/parse.hpp>
#include <boost/json/parse_options.hpp>
#include <vector>

namespace conveyor::json {

namespace {

// Keys and paths quoted in messages are cut here, on a UTF-8 character boundary.
constexpr std::size_t kQuotedBytes = 64;
// Up to this many keys an object's keys are compared pairwise; past it, sorted.
constexpr std::size_t kPairwiseKeys = 16;

std::string quoted(std::string_view text) {
    if (text.size() > kQuotedBytes) {
        std::size_t cut = kQuotedBytes;
        while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0U) == 0x80U) {
            --cut;
        }
        return fmt::format("\"{}…\"", text.substr(0, cut));
    }
    return fmt::format("\"{}\"", text);
}

std::optional<std::string_view> repeated_key(std::vector<std::string_view>& keys) {
    if (keys.size() <= kPairwiseKeys) {
        for (std::size_t i = 0; i < keys.size(); ++i) {
            for (std::size_t j = i + 1; j < keys.size(); ++j) {
                if (keys[i] == keys[j]) {
                    return keys[i];
                }
            }
        }
        return std::nullopt;
    }
    std::sort(keys.begin(), keys.end());
    const auto found = std::adjacent_find(keys.begin(), keys.end());
    return found == keys.end() ? std::nullopt : std::optional(*found);
}

/// Walks the document depth first; `path` is where `element` sits, `depth` its level (the root is 1).
class Checker {
  public:
    explicit Checker(const Limits& limits) : limits_(limits) {}

    std::optional<Violation> visit(simdjson::dom::element element, std::string& path, std::size_t depth) {
        switch (element.type()) {
            case simdjson::dom::element_type::OBJECT:
                return visit_object(element.get_object().value_unsafe(), path, depth);
            case simdjson::dom::element_type::ARRAY:
                return visit_array(element.get_array().value_unsafe(), path, depth);
            case simdjson::dom::element_type::STRING:
                return check_text(element.get_string().value_unsafe(), "a string", path);
            default:
                return std::nullopt;
        }
    }

  private:
    std::optional<Violation> too_deep(std::string_view path, std::size_t depth) const {
        if (depth <= limits_.max_depth) {
            return std::nullopt;
        }
        return Violation{Violation::Kind::too_deep,
                         fmt::format("JSON nests deeper than {} levels at {}", limits_.max_depth, path)};
    }

    std::optional<Violation> check_text(std::string_view text, std::string_view what, std::string_view path) const {
        if (limits_.allow_nul || text.find('\0') == std::string_view::npos) {
            return std::nullopt;
        }
        return Violation{Violation::Kind::nul,
                         fmt::format("{} at {} holds U+0000, which cannot be stored", what, path)};
    }

    std::optional<Violation> visit_object(simdjson::dom::object object, std::string& path, std::size_t depth) {
        if (auto refusal = too_deep(path, depth)) {
            return refusal;
        }
        std::vector<std::string_view> keys;
        keys.reserve(object.size());
        const auto length = path.size();
        for (const auto field : object) {
            if (auto refusal = check_text(field.key, "a key", path)) {
                return refusal;
            }
            keys.push_back(field.key);
            path += '.';
            path.append(field.key.substr(0, kQuotedBytes));
            auto refusal = visit(field.value, path, depth + 1);
            path.resize(length);
            if (refusal) {
                return refusal;
            }
        }
        if (const auto key = repeated_key(keys)) {
            return Violation{Violation::Kind::duplicate_key, fmt::format("duplicate key {} at {}", quoted(*key), path)};
        }
        return std::nullopt;
    }

    std::optional<Violation> visit_array(simdjson::dom::array array, std::string& path, std::size_t depth) {
        if (auto refusal = too_deep(path, depth)) {
            return refusal;
        }
        const auto length = path.size();
        std::size_t index = 0;
        for (const auto item : array) {
            fmt::format_to(std::back_inserter(path), "[{}]", index++);
            auto refusal = visit(item, path, depth + 1);
            path.resize(length);
            if (refusal) {
                return refusal;
            }
        }
        return std::nullopt;
    }

    const Limits& limits_;
};

}  // namespace

std::optional<Violation> check(simdjson::dom::element root, const Limits& limits) {
    std::string path = "$";
    return Checker(limits).visit(root, path, 1);
}

std::optional<boost::json::value> parse_stored(std::string_view text) {
    boost::json::parse_options options;
    options.max_depth = kMaxDepth;
    boost::system::error_code error;
    auto value = boost::json::parse(text, error, {}, options);
    if (error) {
        return std::nullopt;
    }
    return value;
}

}  // namespace conveyor::json
