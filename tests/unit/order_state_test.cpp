#include <gtest/gtest.h>

#include <array>
#include <set>
#include <utility>

#include "conveyor/jobs/order_status.hpp"

namespace conveyor::jobs {
namespace {

using enum OrderStatus;

constexpr std::array kAllStatuses{placed, reserved, paid, confirmed, cancelled, rejected, refunding, refunded};

TEST(OrderStatus, OnlyTheSagasStepsAreAllowedTransitions) {
    // The saga forwards (placed → reserved → paid → confirmed), the compensation before payment (placed or
    // reserved → cancelled), the one after it (paid or confirmed → refunding → refunded) and short stock (placed →
    // rejected); nothing else. Cancelled, rejected and refunded are final, and no status is a transition to itself
    // (a caller that finds the order already there does not move it).
    const std::set<std::pair<OrderStatus, OrderStatus>> allowed{
        {placed, reserved}, {placed, rejected}, {placed, cancelled},    {reserved, paid},      {reserved, cancelled},
        {paid, confirmed},  {paid, refunding},  {confirmed, refunding}, {refunding, refunded},
    };
    for (const auto from : kAllStatuses) {
        for (const auto to : kAllStatuses) {
            EXPECT_EQ(can_transition(from, to), allowed.contains({from, to}))
                << to_string(from) << " → " << to_string(to);
        }
    }
}

TEST(OrderStatus, NamesRoundTripThroughParse) {
    for (const auto status : kAllStatuses) {
        EXPECT_EQ(parse_order_status(to_string(status)), status) << to_string(status);
    }
}

TEST(OrderStatus, NamesAreTheDatabaseEnumsLabels) {
    // shop.order_status (jobs/migrations/1002_shop.sql) stores these words; renaming one breaks every stored order.
    EXPECT_EQ(to_string(placed), "placed");
    EXPECT_EQ(to_string(reserved), "reserved");
    EXPECT_EQ(to_string(paid), "paid");
    EXPECT_EQ(to_string(confirmed), "confirmed");
    EXPECT_EQ(to_string(cancelled), "cancelled");
    EXPECT_EQ(to_string(rejected), "rejected");
    EXPECT_EQ(to_string(refunding), "refunding");
    EXPECT_EQ(to_string(refunded), "refunded");
}

TEST(OrderStatus, ASagaEndsConfirmedCancelledRejectedOrRefunded) {
    const std::set<OrderStatus> settled{confirmed, cancelled, rejected, refunded};
    for (const auto status : kAllStatuses) {
        EXPECT_EQ(is_settled(status), settled.contains(status)) << to_string(status);
    }
}

TEST(OrderStatus, ParseRefusesAnUnknownWord) {
    EXPECT_EQ(parse_order_status("shipped"), std::nullopt);
    EXPECT_EQ(parse_order_status(""), std::nullopt);
    // Case matters: the database's labels are lower case.
    EXPECT_EQ(parse_order_status("Placed"), std::nullopt);
}

}  // namespace
}  // namespace conveyor::jobs
