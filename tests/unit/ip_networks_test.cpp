#include "conveyor/core/ip_networks.hpp"

#include <gtest/gtest.h>

#include <stdexcept>

namespace conveyor {
namespace {

boost::asio::ip::address ip(const char* text) {
    return boost::asio::ip::make_address(text);
}

TEST(IpNetworksTest, ParsesBlocksAndAddresses) {
    const auto networks = IpNetworks::parse(" 10.0.0.0/8, 192.168.1.7 ,fd00::/8,::1");
    EXPECT_TRUE(networks.contains(ip("10.255.1.2")));
    EXPECT_FALSE(networks.contains(ip("11.0.0.1")));
    EXPECT_TRUE(networks.contains(ip("192.168.1.7")));
    EXPECT_FALSE(networks.contains(ip("192.168.1.8")));
    EXPECT_TRUE(networks.contains(ip("fd12::3")));
    EXPECT_TRUE(networks.contains(ip("::1")));
    EXPECT_FALSE(networks.contains(ip("fe80::1")));
    // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6.
    EXPECT_TRUE(networks.contains(ip("::ffff:10.1.2.3")));
    EXPECT_TRUE(IpNetworks::parse("").empty());
    EXPECT_TRUE(IpNetworks::parse("0.0.0.0/0").contains(ip("203.0.113.9")));
    EXPECT_TRUE(IpNetworks::parse("10.1.2.3/31").contains(ip("10.1.2.2")));
    EXPECT_FALSE(IpNetworks::parse("10.1.2.3/31").contains(ip("10.1.2.4")));
}

TEST(IpNetworksTest, RefusesWhatIsNotABlock) {
    EXPECT_THROW((void)IpNetworks::parse("10.0.0.0/33"), std::invalid_argument);
    EXPECT_THROW((void)IpNetworks::parse("example.com"), std::invalid_argument);
    EXPECT_THROW((void)IpNetworks::parse("10.0.0.0/8x"), std::invalid_argument);
    EXPECT_THROW((void)IpNetworks::parse("10.0.0.0/"), std::invalid_argument);
    EXPECT_THROW((void)IpNetworks::parse("::1/129"), std::invalid_argument);
}

TEST(IpNetworksTest, BelievesXForwardedForOnlyFromTrustedProxies) {
    const auto proxies = IpNetworks::parse("10.0.0.0/8");
    // The peer is no proxy: the header is whatever the client wanted it to be.
    EXPECT_EQ(proxies.client_of(ip("203.0.113.9"), "1.2.3.4"), ip("203.0.113.9"));
    EXPECT_EQ(proxies.client_of(ip("10.0.0.5"), std::nullopt), ip("10.0.0.5"));
    EXPECT_EQ(proxies.client_of(ip("10.0.0.5"), "198.51.100.7"), ip("198.51.100.7"));
    // Rightmost first, through the proxies; what the client wrote on the left is not believed.
    EXPECT_EQ(proxies.client_of(ip("10.0.0.5"), "6.6.6.6, 198.51.100.7, 10.0.0.9"), ip("198.51.100.7"));
    EXPECT_EQ(proxies.client_of(ip("10.0.0.5"), "198.51.100.7:4711,10.0.0.9"), ip("198.51.100.7"));
    EXPECT_EQ(proxies.client_of(ip("10.0.0.5"), "[2001:db8::1]:80"), ip("2001:db8::1"));
    // Garbage ends the walk at the last proxy reached.
    EXPECT_EQ(proxies.client_of(ip("10.0.0.5"), "1.2.3.4, not-an-address, 10.0.0.9"), ip("10.0.0.9"));
    EXPECT_EQ(proxies.client_of(ip("10.0.0.5"), "10.0.0.8,10.0.0.9"), ip("10.0.0.8"));
}

}  // namespace
}  // namespace conveyor
