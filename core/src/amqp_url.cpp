#include <fmt/format.h>

#include <boost/url/parse.hpp>
#include <stdexcept>

#include "conveyor/core/amqp.hpp"

namespace conveyor::amqp {

Url Url::parse(std::string_view text) {
    auto parsed = boost::urls::parse_uri(text);
    if (!parsed) {
        throw std::invalid_argument(fmt::format("invalid AMQP URL: {}", parsed.error().message()));
    }
    const auto& uri = *parsed;
    Url url;
    if (uri.scheme() == "amqps") {
        url.tls = true;
        url.port = 5671;
    } else if (uri.scheme() != "amqp") {
        throw std::invalid_argument(
            fmt::format("invalid AMQP URL: scheme must be amqp or amqps, not '{}'", std::string_view(uri.scheme())));
    }
    url.host = uri.encoded_host().empty() ? "localhost" : std::string(uri.host());
    if (uri.has_port()) {
        if (uri.port_number() == 0) {
            throw std::invalid_argument(fmt::format("invalid AMQP URL: bad port '{}'", std::string_view(uri.port())));
        }
        url.port = uri.port_number();
    }
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

std::string Url::redacted() const {
    std::string vhost_part = vhost == "/" ? "%2f" : vhost;
    return fmt::format("{}://{}:***@{}:{}/{}", tls ? "amqps" : "amqp", user, host, port, vhost_part);
}

}  // namespace conveyor::amqp
