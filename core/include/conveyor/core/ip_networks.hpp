#pragma once

#include <boost/asio/ip/address.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace conveyor {

/// A set of IP networks such as "10.0.0.0/8,::1,192.168.1.7" (an address alone is a network of one), e.g. the
/// proxies whose X-Forwarded-For header is believed.
class IpNetworks {
  public:
    /// Comma-separated CIDR blocks or addresses; blanks around entries are ignored, an empty text is the empty set.
    /// Throws std::invalid_argument naming the entry that is neither.
    [[nodiscard]] static IpNetworks parse(std::string_view text);

    [[nodiscard]] bool contains(const boost::asio::ip::address& address) const;
    [[nodiscard]] bool empty() const noexcept { return networks_.empty(); }

    /// The address a request comes from: `peer` itself, unless it is in this set and the request carries
    /// X-Forwarded-For (`forwarded_for`, all such headers joined by commas); then the rightmost entry of that list
    /// that is not in this set either, walking right to left through proxies in it. An entry that is not an
    /// address ends the walk at the last proxy reached: what lies left of it cannot be believed.
    [[nodiscard]] boost::asio::ip::address client_of(const boost::asio::ip::address& peer,
                                                     std::optional<std::string_view> forwarded_for) const;

  private:
    struct Network {
        boost::asio::ip::address address;
        unsigned prefix = 0;
    };
    std::vector<Network> networks_;
};

/// An IPv4-mapped IPv6 address (::ffff:a.b.c.d, as a dual-stack socket reports IPv4 peers) as IPv4; others as given.
[[nodiscard]] boost::asio::ip::address unmapped(const boost::asio::ip::address& address);

}  // namespace conveyor
