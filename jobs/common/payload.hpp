#pragma once

#include <simdjson.h>

#include <boost/json/object.hpp>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace conveyor::jobs {

enum class Need { required, optional };

/// Reads a job's payload field by field and keeps the first thing wrong with it, worded for the operator who
/// finds the job in a dead-letter queue. The rules match the JSON Schemas in jobs/schemas, which other systems
/// validate against (tests/unit/payload_schema_test.cpp holds both to the same samples). Lengths count
/// characters (code points), as JSON Schema does.
class PayloadReader {
  public:
    /// Reads a whole payload, which must be a JSON object.
    explicit PayloadReader(simdjson::dom::element payload);
    /// Reads a nested object `path` (e.g. "customer", "items[2]"), reporting into `parent`.
    PayloadReader(PayloadReader& parent, simdjson::dom::object object, std::string path);

    [[nodiscard]] std::optional<std::string_view> string(std::string_view key, Need need, std::size_t min_chars,
                                                         std::size_t max_chars);
    /// 1-64 characters from [A-Za-z0-9._:-], the first a letter or digit.
    [[nodiscard]] std::optional<std::string_view> identifier(std::string_view key, Need need = Need::required);
    /// Three upper-case ASCII letters.
    [[nodiscard]] std::optional<std::string_view> currency(std::string_view key);
    /// local@domain.tld: one '@', no whitespace, a '.' inside the domain; at most 254 characters.
    [[nodiscard]] std::optional<std::string_view> email(std::string_view key);
    [[nodiscard]] std::optional<std::string_view> one_of(std::string_view key,
                                                         std::initializer_list<std::string_view> allowed);
    [[nodiscard]] std::optional<std::int64_t> integer(std::string_view key, Need need, std::int64_t min,
                                                      std::int64_t max);
    [[nodiscard]] std::optional<bool> boolean(std::string_view key, Need need);
    [[nodiscard]] std::optional<simdjson::dom::object> object(std::string_view key, Need need);
    [[nodiscard]] std::optional<simdjson::dom::array> array(std::string_view key, Need need, std::size_t min_items,
                                                            std::size_t max_items);
    /// Any field not in `known` is an error (the schema's additionalProperties: false).
    void only(std::initializer_list<std::string_view> known);

    void fail(std::string error);
    [[nodiscard]] bool ok() const noexcept { return error_->empty(); }
    /// What is wrong, or nothing.
    [[nodiscard]] std::optional<std::string> error() const;
    [[nodiscard]] std::string name(std::string_view key) const;

  private:
    [[nodiscard]] std::optional<simdjson::dom::element> field(std::string_view key, Need need);

    simdjson::dom::object object_;
    std::string path_;
    std::string own_error_;
    std::string* error_;
};

/// Quantities by product, ordered by product id (the order stock rows are locked in).
using Quantities = std::map<std::string_view, std::int64_t, std::less<>>;

/// Reads the array of order lines `[{product_id, quantity}]` under `key`: 1 to `max_lines` of them, each quantity 1 to
/// `max_quantity`; lines naming the same product are added up. Empty when the reader has failed.
[[nodiscard]] Quantities read_quantities(PayloadReader& reader, std::string_view key, std::size_t max_lines,
                                         std::int64_t max_quantity);

/// The number of code points in valid UTF-8 (simdjson has validated every string it hands out).
[[nodiscard]] std::size_t utf8_length(std::string_view text) noexcept;

/// The compact JSON text of an object built with Boost.JSON, for payloads and event data.
[[nodiscard]] std::string to_json(const boost::json::object& object);

}  // namespace conveyor::jobs
