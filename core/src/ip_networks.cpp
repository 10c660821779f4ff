#include "conveyor/core/ip_networks.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <stdexcept>

namespace conveyor {

namespace asio = boost::asio;

namespace {

std::string_view trimmed(std::string_view text) {
    const auto first = text.find_first_not_of(" \t");
    if (first == std::string_view::npos) {
        return {};
    }
    return text.substr(first, text.find_last_not_of(" \t") - first + 1);
}

std::optional<asio::ip::address> parse_address(std::string_view text) {
    boost::system::error_code error;
    const auto address = asio::ip::make_address(std::string(text), error);
    if (error) {
        return std::nullopt;
    }
    return unmapped(address);
}

/// An X-Forwarded-For entry: an address, possibly with a port ("1.2.3.4:80", "[2001:db8::1]:80").
std::optional<asio::ip::address> parse_forwarded(std::string_view entry) {
    entry = trimmed(entry);
    if (entry.starts_with('[')) {
        return parse_address(entry.substr(1, entry.find(']') - 1));
    }
    if (std::count(entry.begin(), entry.end(), ':') == 1) {
        entry = entry.substr(0, entry.find(':'));
    }
    return parse_address(entry);
}

std::vector<unsigned char> bytes_of(const asio::ip::address& address) {
    if (address.is_v4()) {
        const auto bytes = address.to_v4().to_bytes();
        return {bytes.begin(), bytes.end()};
    }
    const auto bytes = address.to_v6().to_bytes();
    return {bytes.begin(), bytes.end()};
}

bool same_prefix(const asio::ip::address& a, const asio::ip::address& b, unsigned prefix) {
    const auto left = bytes_of(a);
    const auto right = bytes_of(b);
    for (unsigned bit = 0; bit < prefix; bit += 8) {
        const unsigned bits = std::min(8U, prefix - bit);
        const auto mask = static_cast<unsigned char>(0xFFU << (8 - bits));
        if ((left[bit / 8] & mask) != (right[bit / 8] & mask)) {
            return false;
        }
    }
    return true;
}

}  // namespace

asio::ip::address unmapped(const asio::ip::address& address) {
    if (address.is_v6() && address.to_v6().is_v4_mapped()) {
        return asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
    }
    return address;
}

IpNetworks IpNetworks::parse(std::string_view text) {
    IpNetworks networks;
    while (!trimmed(text).empty()) {
        const auto comma = text.find(',');
        const auto entry = trimmed(text.substr(0, comma));
        text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
        const auto slash = entry.find('/');
        const auto address = parse_address(entry.substr(0, slash));
        if (!address) {
            throw std::invalid_argument(fmt::format("'{}' is not an IP address or CIDR block", entry));
        }
        const unsigned bits = address->is_v4() ? 32 : 128;
        unsigned prefix = bits;
        if (slash != std::string_view::npos) {
            const auto digits = entry.substr(slash + 1);
            const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), prefix);
            if (error != std::errc{} || end != digits.data() + digits.size() || prefix > bits) {
                throw std::invalid_argument(fmt::format("'{}': the prefix length must be 0 to {}", entry, bits));
            }
        }
        networks.networks_.push_back(Network{*address, prefix});
    }
    return networks;
}

bool IpNetworks::contains(const asio::ip::address& address) const {
    const auto candidate = unmapped(address);
    return std::any_of(networks_.begin(), networks_.end(), [&](const Network& network) {
        return network.address.is_v4() == candidate.is_v4() && same_prefix(network.address, candidate, network.prefix);
    });
}

asio::ip::address IpNetworks::client_of(const asio::ip::address& peer,
                                        std::optional<std::string_view> forwarded_for) const {
    auto client = unmapped(peer);
    if (!forwarded_for || !contains(client)) {
        return client;
    }
    auto rest = *forwarded_for;
    while (!rest.empty()) {
        const auto comma = rest.rfind(',');
        const auto entry = comma == std::string_view::npos ? rest : rest.substr(comma + 1);
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(0, comma);
        const auto hop = parse_forwarded(entry);
        if (!hop) {
            return client;
        }
        client = *hop;
        if (!contains(client)) {
            return client;
        }
    }
    return client;
}

}  // namespace conveyor
