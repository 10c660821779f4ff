#pragma once

#include <amqp.h>

#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/amqp.hpp"

/// Conversions between Conveyor's AMQP types and rabbitmq-c's. Private to core: amqp.h stays out of public headers.
namespace conveyor::amqp::codec {

[[nodiscard]] inline amqp_bytes_t bytes_of(std::string_view text) noexcept {
    // rabbitmq-c never writes through the pointer of an amqp_bytes_t it is given to send.
    return amqp_bytes_t{text.size(), const_cast<char*>(text.data())};
}

[[nodiscard]] inline std::string to_string(amqp_bytes_t bytes) {
    return bytes.len == 0 ? std::string() : std::string(static_cast<const char*>(bytes.bytes), bytes.len);
}

/// A field table that borrows the strings of the Headers it was built from.
class EncodedTable {
  public:
    explicit EncodedTable(const Headers& headers);
    [[nodiscard]] amqp_table_t table() noexcept { return {static_cast<int>(entries_.size()), entries_.data()}; }

  private:
    std::vector<amqp_table_entry_t> entries_;
};

/// basic.properties that borrow the strings of the Properties they were built from.
class EncodedProperties {
  public:
    explicit EncodedProperties(const Properties& properties);
    [[nodiscard]] const amqp_basic_properties_t* get() const noexcept { return &properties_; }

  private:
    EncodedTable headers_;
    amqp_basic_properties_t properties_{};
};

[[nodiscard]] Headers decode_table(const amqp_table_t& table);
[[nodiscard]] Properties decode_properties(const amqp_basic_properties_t& in);

}  // namespace conveyor::amqp::codec
