#pragma once

#include <string>
#include <string_view>

namespace conveyor {

/// A connection string fit for logs, errors, /readyz and --help: every credential in it replaced by "***". Knows
/// both kinds Conveyor reads, and every form libpq and the AMQP URI spec accept:
/// - URIs (postgresql://, amqp://, amqps://, …): the password of the userinfo (`user:***@host`), in each URI of a
///   comma-separated list and whatever the number of hosts; every query parameter whose percent-decoded name ends
///   in "password", case-insensitively (`?password=***`, `&sslpassword=***`);
/// - libpq's keyword form (`host=db password='a b' sslpassword=x`): every value of such a keyword, quoted or not.
/// The rest of the text is kept as given, so the redacted form still says where the process connects.
[[nodiscard]] std::string redacted_url(std::string_view url);

}  // namespace conveyor
