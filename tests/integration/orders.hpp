#pragma once

#include <fmt/format.h>

#include <string>
#include <vector>

/// The payload of an orders.place job, as a shop's front end would publish it.
namespace conveyor::testing {

struct Line {
    std::string product;
    int quantity = 1;
};

inline std::string order_payload(const std::string& order_id, const std::string& customer,
                                 const std::vector<Line>& lines, const std::string& currency = "EUR") {
    std::string items;
    for (const auto& line : lines) {
        items += fmt::format(R"({}{{"product_id":"{}","quantity":{}}})", items.empty() ? "" : ",", line.product,
                             line.quantity);
    }
    return fmt::format(
        R"({{"order_id":"{}","customer":{{"id":"{}","email":"{}@example.com","name":"Customer {}"}},"items":[{}],"currency":"{}"}})",
        order_id, customer, customer, customer, items, currency);
}

}  // namespace conveyor::testing
