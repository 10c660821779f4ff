#include <fmt/format.h>

#include <boost/url/parse.hpp>
#include <stdexcept>

#include "conveyor/core/amqp.hpp"

namespace conveyor::amqp {

namespace {

/// The credentials, endpoint and vhost of a URL naming one host.
Url parse_single(std::string_view text) {
    auto parsed = boost::urls::parse_uri(text);
    if (!parsed) {
        throw std::invalid_argument(fmt::format("invalid AMQP URL: {}", parsed.error().message()));
    }
    const auto& uri = *parsed;
    Url url;
    Endpoint endpoint;
    if (uri.scheme() == "amqps") {
        url.tls = true;
        endpoint.port = 5671;
    } else if (uri.scheme() != "amqp") {
        throw std::invalid_argument(
            fmt::format("invalid AMQP URL: scheme must be amqp or amqps, not '{}'", std::string_view(uri.scheme())));
    }
    if (uri.encoded_host().empty()) {
        endpoint.host = "localhost";
    } else {
        // An IPv6 literal without its brackets, as getaddrinfo takes it.
        endpoint.host =
            uri.host_type() == boost::urls::host_type::ipv6 ? std::string(uri.host_address()) : std::string(uri.host());
    }
    if (uri.has_port()) {
        if (uri.port_number() == 0) {
            throw std::invalid_argument(fmt::format("invalid AMQP URL: bad port '{}'", std::string_view(uri.port())));
        }
        endpoint.port = uri.port_number();
    }
    url.endpoints.push_back(std::move(endpoint));
    if (uri.has_userinfo()) {
        url.user = uri.user();
        url.password = uri.password();
    }
    // RabbitMQ's URI spec: the path minus its leading slash, percent-decoded, is the vhost ("/%2f" is "/").
    std::string path = uri.path();
    if (path.size() > 1) {
        url.vhost = path.substr(1);
    }
    return url;
}

}  // namespace

Url Url::parse(std::string_view text) {
    // A URI has one host; the hosts of a multi-host URL are parsed one at a time, each put back into the whole.
    const auto scheme_end = text.find("://");
    if (scheme_end == std::string_view::npos) {
        return parse_single(text);
    }
    const auto hosts_end = std::min(text.find_first_of("/?#", scheme_end + 3), text.size());
    const auto at = text.substr(0, hosts_end).rfind('@');
    const auto hosts_begin = at == std::string_view::npos || at < scheme_end ? scheme_end + 3 : at + 1;
    const auto hosts = text.substr(hosts_begin, hosts_end - hosts_begin);
    if (hosts.find(',') == std::string_view::npos) {
        return parse_single(text);
    }
    Url url;
    std::size_t begin = 0;
    while (begin <= hosts.size()) {
        const auto comma = std::min(hosts.find(',', begin), hosts.size());
        const auto host = hosts.substr(begin, comma - begin);
        if (host.empty()) {
            throw std::invalid_argument("invalid AMQP URL: an empty host in its list of hosts");
        }
        auto one = parse_single(fmt::format("{}{}{}", text.substr(0, hosts_begin), host, text.substr(hosts_end)));
        if (url.endpoints.empty()) {
            url = std::move(one);
        } else {
            url.endpoints.push_back(std::move(one.endpoints.front()));
        }
        begin = comma + 1;
    }
    return url;
}

std::string Url::redacted() const {
    std::string hosts;
    for (const auto& endpoint : endpoints) {
        const bool ipv6 = endpoint.host.find(':') != std::string::npos;
        fmt::format_to(std::back_inserter(hosts), "{}{}{}{}:{}", hosts.empty() ? "" : ",", ipv6 ? "[" : "",
                       endpoint.host, ipv6 ? "]" : "", endpoint.port);
    }
    const std::string vhost_part = vhost == "/" ? "%2f" : vhost;
    return fmt::format("{}://{}:***@{}/{}", tls ? "amqps" : "amqp", user, hosts, vhost_part);
}

std::string Url::redacted(const Endpoint& endpoint) const {
    Url one = *this;
    one.endpoints = {endpoint};
    return one.redacted();
}

}  // namespace conveyor::amqp
