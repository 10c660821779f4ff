// redacted_url() and IpNetworks: the text an operator (or an attacker who can set an environment variable or an
// X-Forwarded-For header) hands them.
//
// Each input is used twice:
// - as it is, through redacted_url(), IpNetworks::parse() and client_of(): nothing may crash, and parse() may
//   only refuse with std::invalid_argument;
// - through FuzzedDataProvider, as the parts of a connection string with a password in it, in one of the forms
//   redacted_url() knows (a URI's userinfo, possibly after other URIs in a list; a URI query parameter named
//   *password; libpq's keyword form, unquoted and quoted). The redacted text must not depend on the password at
//   all: the same string with another password must redact to the same output, which therefore cannot hold the
//   password (unless the password happens to be part of the rest of the text).

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <array>
#include <boost/asio/ip/address.hpp>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "conveyor/core/ip_networks.hpp"
#include "conveyor/core/redaction.hpp"

namespace {

[[noreturn]] void violated(const char* what, std::string_view input, std::string_view output = {}) {
    std::fprintf(stderr, "fuzz_redaction: invariant violated: %s\n  input:  %.*s\n  output: %.*s\n", what,
                 static_cast<int>(input.size()), input.data(), static_cast<int>(output.size()), output.data());
    std::abort();
}

std::string without(std::string text, std::string_view banned) {
    std::erase_if(text, [&](char c) { return banned.find(c) != std::string_view::npos; });
    return text;
}

/// A URI scheme: a letter, then letters, digits, '+', '-' and '.'.
std::string scheme(FuzzedDataProvider& provider) {
    static constexpr std::array<std::string_view, 5> kKnown = {"postgresql", "postgres", "amqp", "amqps", "redis"};
    const auto index = provider.ConsumeIntegralInRange<std::size_t>(0, kKnown.size());
    if (index < kKnown.size()) {
        return std::string(kKnown[index]);
    }
    auto text = provider.ConsumeRandomLengthString(12);
    std::erase_if(text, [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '+' && c != '-' && c != '.';
    });
    if (text.empty() || std::isalpha(static_cast<unsigned char>(text.front())) == 0) {
        text.insert(0, "x");
    }
    return text;
}

std::string password_name(FuzzedDataProvider& provider) {
    static constexpr std::array<std::string_view, 5> kNames = {"password", "sslpassword", "PassWord", "%70assword",
                                                               "x%2Dpassword"};
    return std::string(kNames[provider.ConsumeIntegralInRange<std::size_t>(0, kNames.size() - 1)]);
}

/// libpq's quoting of a keyword value: backslash before ' and \.
std::string quoted(std::string_view value) {
    std::string text = "'";
    for (const char c : value) {
        if (c == '\'' || c == '\\') {
            text += '\\';
        }
        text += c;
    }
    return text + "'";
}

/// Other keyword=value pairs of a libpq keyword string, well formed so that none swallows the password's.
std::string keyword_pairs(FuzzedDataProvider& provider) {
    std::string text;
    const auto count = provider.ConsumeIntegralInRange(0, 3);
    for (int i = 0; i < count; ++i) {
        auto key = provider.ConsumeRandomLengthString(12);
        std::erase_if(key, [](char c) { return std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '_'; });
        if (key.empty()) {
            key = "host";
        }
        auto value = provider.ConsumeRandomLengthString(24);
        if (provider.ConsumeBool()) {
            value = quoted(value);
        } else {
            std::erase_if(value, [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0 || c == '\''; });
            value.erase(0, value.find_first_not_of('='));
            if (value.empty()) {
                value = "x";
            }
        }
        text.append(key).append(provider.ConsumeBool() ? " = " : "=").append(value).append(" ");
    }
    return text;
}

/// A connection string around a password: `before` + the password (quoted in the quoted keyword form) + `after`.
struct Form {
    enum class Kind { userinfo, query, keyword, quoted_keyword };
    Kind kind;
    std::string before;
    std::string after;

    [[nodiscard]] std::string with(std::string_view password) const {
        return before + (kind == Kind::quoted_keyword ? quoted(password) : std::string(password)) + after;
    }
};

/// One of the forms redacted_url() knows, with a place for the password.
Form password_form(FuzzedDataProvider& provider) {
    switch (provider.ConsumeIntegralInRange(0, 3)) {
        case 0: {  // scheme://user:password@hosts/rest, possibly after other URIs of a list
            std::string list;
            if (provider.ConsumeBool()) {
                list = scheme(provider) + "://" + provider.ConsumeRandomLengthString(32) + ",";
            }
            const auto user = without(provider.ConsumeRandomLengthString(16), "@/?#,");
            const auto uri_scheme = scheme(provider);
            const auto host = provider.ConsumeRandomLengthString(24);
            const auto rest = provider.ConsumeRandomLengthString(32);
            return {Form::Kind::userinfo, list + uri_scheme + "://" + user + ":", "@" + host + rest};
        }
        case 1: {  // scheme://host/db?...&password=...&...
            const auto uri_scheme = scheme(provider);
            // No ',' before the password: ",scheme://" would begin the next URI of a list.
            const auto authority = without(provider.ConsumeRandomLengthString(24), "?#,");
            const auto first = without(provider.ConsumeRandomLengthString(16), "#,");
            const auto name = password_name(provider);
            const auto last = provider.ConsumeRandomLengthString(16);
            return {Form::Kind::query,
                    uri_scheme + "://" + authority + "?" + (first.empty() ? "" : first + "&") + name + "=",
                    last.empty() ? "" : "&" + last};
        }
        case 2: {  // host=h password=secret dbname=d
            auto before = keyword_pairs(provider) + password_name(provider) + (provider.ConsumeBool() ? " = " : "=");
            return {Form::Kind::keyword, std::move(before), " " + keyword_pairs(provider)};
        }
        default: {  // host=h password='a secret' dbname=d
            auto before = keyword_pairs(provider) + password_name(provider) + "=";
            return {Form::Kind::quoted_keyword, std::move(before), " " + keyword_pairs(provider)};
        }
    }
}

/// A password from the fuzzer, without what would end it early in its form (what libpq or the URI syntax would
/// read as the end of the password too).
std::string password_for(const Form& form, FuzzedDataProvider& provider) {
    auto password = provider.ConsumeRandomLengthString(32);
    switch (form.kind) {
        case Form::Kind::userinfo:
            return without(std::move(password), "@/?#,");
        case Form::Kind::query:
            return without(std::move(password), "&#,");
        case Form::Kind::keyword:
            std::erase_if(password, [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; });
            password.erase(0, password.find_first_not_of("='"));
            return password;
        case Form::Kind::quoted_keyword:
            return password;  // quoted() escapes anything
    }
    return password;
}

void check_password_form(FuzzedDataProvider& provider) {
    const auto form = password_form(provider);
    const auto password = password_for(form, provider);
    if (password.empty()) {
        return;
    }
    const auto text = form.with(password);
    const auto redacted = conveyor::redacted_url(text);
    const auto reference = conveyor::redacted_url(form.with("pw"));
    // Equal outputs mean the password cannot be in this one, unless the rest of the text holds it too.
    if (redacted != reference) {
        violated(redacted.find(password) != std::string::npos ? "the password is in the redacted text"
                                                              : "the redacted text depends on the password",
                 text, redacted);
    }
}

boost::asio::ip::address peer(FuzzedDataProvider& provider) {
    switch (provider.ConsumeIntegralInRange(0, 3)) {
        case 0:
            return boost::asio::ip::make_address("127.0.0.1");
        case 1:
            return boost::asio::ip::make_address("::ffff:10.0.0.1");
        case 2: {
            boost::asio::ip::address_v4::bytes_type bytes{};
            for (auto& byte : bytes) {
                byte = provider.ConsumeIntegral<unsigned char>();
            }
            return boost::asio::ip::address_v4(bytes);
        }
        default: {
            boost::asio::ip::address_v6::bytes_type bytes{};
            for (auto& byte : bytes) {
                byte = provider.ConsumeIntegral<unsigned char>();
            }
            return boost::asio::ip::address_v6(bytes);
        }
    }
}

void check_networks(std::string_view text, FuzzedDataProvider& provider) {
    const auto networks_text = provider.ConsumeRandomLengthString(96);
    const auto client = peer(provider);
    const auto forwarded =
        provider.ConsumeBool() ? std::optional(provider.ConsumeRandomLengthString(128)) : std::nullopt;
    for (const std::string_view candidate : {text, std::string_view(networks_text)}) {
        conveyor::IpNetworks networks;
        try {
            networks = conveyor::IpNetworks::parse(candidate);
        } catch (const std::invalid_argument&) {
            continue;
        }
        const auto address = networks.client_of(client, forwarded);
        const auto unmapped_peer = conveyor::unmapped(client);
        if ((!forwarded || !networks.contains(unmapped_peer)) && address != unmapped_peer) {
            violated("client_of() believed X-Forwarded-For from an untrusted peer", candidate, address.to_string());
        }
        if (address.is_v6() && address.to_v6().is_v4_mapped()) {
            violated("client_of() returned an IPv4-mapped address", candidate, address.to_string());
        }
        (void)networks.client_of(client, text);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    (void)conveyor::redacted_url(text);

    FuzzedDataProvider provider(data, size);
    check_password_form(provider);
    check_networks(text, provider);
    return 0;
}
