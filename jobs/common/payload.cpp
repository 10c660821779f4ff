#include "payload.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/json/serialize.hpp>

namespace conveyor::jobs {

namespace {

constexpr std::size_t kMaxIdentifierChars = 64;
constexpr std::size_t kMaxEmailChars = 254;

bool identifier_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == ':' || c == '-';
}

bool alphanumeric(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/// Decodes the code point at `text[i]` (valid UTF-8) and its length in bytes.
std::pair<char32_t, std::size_t> code_point_at(std::string_view text, std::size_t i) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0x80) {
        return {lead, 1};
    }
    const std::size_t length = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
    char32_t value = lead & (length == 2 ? 0x1F : length == 3 ? 0x0F : 0x07);
    for (std::size_t k = 1; k < length && i + k < text.size(); ++k) {
        value = (value << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
    }
    return {value, length};
}

/// What JSON Schema's `\s` (in the schemas' email pattern) matches: ASCII and Unicode white space.
bool white_space(char32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || (c >= 0x1C && c <= 0x1F) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000 ||
           c == 0xFEFF;
}

/// `[^@\s]+`: non-empty, no '@', no white space.
bool address_part(std::string_view part) {
    if (part.empty()) {
        return false;
    }
    for (std::size_t i = 0; i < part.size();) {
        const auto [c, length] = code_point_at(part, i);
        if (c == '@' || white_space(c)) {
            return false;
        }
        i += length;
    }
    return true;
}

}  // namespace

std::size_t utf8_length(std::string_view text) noexcept {
    return static_cast<std::size_t>(
        std::count_if(text.begin(), text.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

std::string to_json(const boost::json::object& object) {
    return boost::json::serialize(object);
}

PayloadReader::PayloadReader(simdjson::dom::element payload) : error_(&own_error_) {
    if (payload.get(object_) != simdjson::SUCCESS) {
        fail("the payload must be a JSON object");
    }
}

PayloadReader::PayloadReader(PayloadReader& parent, simdjson::dom::object object, std::string path)
    : object_(object), path_(std::move(path)), error_(parent.error_) {}

std::string PayloadReader::name(std::string_view key) const {
    return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
}

void PayloadReader::fail(std::string error) {
    if (error_->empty()) {
        *error_ = std::move(error);
    }
}

std::optional<std::string> PayloadReader::error() const {
    if (error_->empty()) {
        return std::nullopt;
    }
    return *error_;
}

std::optional<simdjson::dom::element> PayloadReader::field(std::string_view key, Need need) {
    if (!ok()) {
        return std::nullopt;
    }
    simdjson::dom::element value;
    if (object_[key].get(value) != simdjson::SUCCESS) {
        if (need == Need::required) {
            fail(fmt::format("'{}' is required", name(key)));
        }
        return std::nullopt;
    }
    return value;
}

std::optional<std::string_view> PayloadReader::string(std::string_view key, Need need, std::size_t min_chars,
                                                      std::size_t max_chars) {
    const auto value = field(key, need);
    if (!value) {
        return std::nullopt;
    }
    std::string_view text;
    if (value->get(text) != simdjson::SUCCESS) {
        fail(fmt::format("'{}' must be a string", name(key)));
        return std::nullopt;
    }
    const auto length = utf8_length(text);
    if (length < min_chars || length > max_chars) {
        fail(fmt::format("'{}' must be {} to {} characters long (it has {})", name(key), min_chars, max_chars, length));
        return std::nullopt;
    }
    return text;
}

std::optional<std::string_view> PayloadReader::identifier(std::string_view key, Need need) {
    const auto text = string(key, need, 0, std::numeric_limits<std::size_t>::max());
    if (!text) {
        return std::nullopt;
    }
    const bool valid = !text->empty() && text->size() <= kMaxIdentifierChars && alphanumeric(text->front()) &&
                       std::all_of(text->begin(), text->end(), identifier_char);
    if (!valid) {
        fail(
            fmt::format("'{}' must be an identifier: 1 to 64 characters from A-Z a-z 0-9 . _ : -, starting with a "
                        "letter or digit",
                        name(key)));
        return std::nullopt;
    }
    return text;
}

std::optional<std::string_view> PayloadReader::currency(std::string_view key) {
    const auto text = string(key, Need::required, 0, std::numeric_limits<std::size_t>::max());
    if (!text) {
        return std::nullopt;
    }
    if (text->size() != 3 || !std::all_of(text->begin(), text->end(), [](char c) { return c >= 'A' && c <= 'Z'; })) {
        fail(fmt::format("'{}' must be a currency code of three upper-case letters, e.g. EUR", name(key)));
        return std::nullopt;
    }
    return text;
}

std::optional<std::string_view> PayloadReader::email(std::string_view key) {
    const auto text = string(key, Need::required, 0, std::numeric_limits<std::size_t>::max());
    if (!text) {
        return std::nullopt;
    }
    const auto at = text->find('@');
    bool valid = utf8_length(*text) <= kMaxEmailChars && at != std::string_view::npos;
    if (valid) {
        const auto local = text->substr(0, at);
        const auto domain = text->substr(at + 1);
        // `[^@\s]+\.[^@\s]+`: a dot in the domain that is neither its first nor its last character.
        const auto inner = domain.size() > 2 ? domain.substr(1, domain.size() - 2) : std::string_view();
        valid = address_part(local) && address_part(domain) && inner.find('.') != std::string_view::npos;
    }
    if (!valid) {
        fail(fmt::format("'{}' must be an email address (local@domain.tld, no spaces, at most 254 characters)",
                         name(key)));
        return std::nullopt;
    }
    return text;
}

std::optional<std::string_view> PayloadReader::one_of(std::string_view key,
                                                      std::initializer_list<std::string_view> allowed) {
    const auto text = string(key, Need::required, 0, std::numeric_limits<std::size_t>::max());
    if (!text) {
        return std::nullopt;
    }
    if (std::find(allowed.begin(), allowed.end(), *text) == allowed.end()) {
        std::string names;
        for (const auto option : allowed) {
            names += names.empty() ? "" : ", ";
            names += option;
        }
        fail(fmt::format("'{}' must be one of {}", name(key), names));
        return std::nullopt;
    }
    return text;
}

std::optional<std::int64_t> PayloadReader::integer(std::string_view key, Need need, std::int64_t min,
                                                   std::int64_t max) {
    const auto value = field(key, need);
    if (!value) {
        return std::nullopt;
    }
    std::int64_t number = 0;
    const bool whole = value->is_int64() || value->is_uint64();
    if (!whole) {
        fail(fmt::format("'{}' must be an integer", name(key)));
        return std::nullopt;
    }
    if (value->get(number) != simdjson::SUCCESS || number < min || number > max) {
        fail(fmt::format("'{}' must be an integer from {} to {}", name(key), min, max));
        return std::nullopt;
    }
    return number;
}

std::optional<bool> PayloadReader::boolean(std::string_view key, Need need) {
    const auto value = field(key, need);
    if (!value) {
        return std::nullopt;
    }
    bool flag = false;
    if (value->get(flag) != simdjson::SUCCESS) {
        fail(fmt::format("'{}' must be true or false", name(key)));
        return std::nullopt;
    }
    return flag;
}

std::optional<simdjson::dom::object> PayloadReader::object(std::string_view key, Need need) {
    const auto value = field(key, need);
    if (!value) {
        return std::nullopt;
    }
    simdjson::dom::object nested;
    if (value->get(nested) != simdjson::SUCCESS) {
        fail(fmt::format("'{}' must be an object", name(key)));
        return std::nullopt;
    }
    return nested;
}

std::optional<simdjson::dom::array> PayloadReader::array(std::string_view key, Need need, std::size_t min_items,
                                                         std::size_t max_items) {
    const auto value = field(key, need);
    if (!value) {
        return std::nullopt;
    }
    simdjson::dom::array items;
    if (value->get(items) != simdjson::SUCCESS) {
        fail(fmt::format("'{}' must be an array", name(key)));
        return std::nullopt;
    }
    const auto size = items.size();
    if (size < min_items || size > max_items) {
        fail(fmt::format("'{}' must have {} to {} entries (it has {})", name(key), min_items, max_items, size));
        return std::nullopt;
    }
    return items;
}

void PayloadReader::only(std::initializer_list<std::string_view> known) {
    if (!ok()) {
        return;
    }
    for (const auto field : object_) {
        if (std::find(known.begin(), known.end(), field.key) == known.end()) {
            fail(fmt::format("unknown field '{}'", name(field.key)));
            return;
        }
    }
}

Quantities read_quantities(PayloadReader& reader, std::string_view key, std::size_t max_lines,
                           std::int64_t max_quantity) {
    Quantities quantities;
    const auto lines = reader.array(key, Need::required, 1, max_lines);
    if (!lines) {
        return quantities;
    }
    std::size_t index = 0;
    for (const auto line : *lines) {
        const auto path = fmt::format("{}[{}]", key, index++);
        simdjson::dom::object fields_object;
        if (line.get(fields_object) != simdjson::SUCCESS) {
            reader.fail(fmt::format("'{}' must be an object", reader.name(path)));
            return {};
        }
        PayloadReader fields(reader, fields_object, reader.name(path));
        const auto product = fields.identifier("product_id");
        const auto quantity = fields.integer("quantity", Need::required, 1, max_quantity);
        fields.only({"product_id", "quantity"});
        if (!product || !quantity) {
            return {};
        }
        quantities[*product] += *quantity;
    }
    return quantities;
}

}  // namespace conveyor::jobs
