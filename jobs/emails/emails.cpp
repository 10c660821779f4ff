#include <fmt/chrono.h>
#include <fmt/format.h>

#include <array>
#include <ctime>
#include <random>

#include "../common/families.hpp"
#include "../common/payload.hpp"

namespace conveyor::jobs {
namespace asio = boost::asio;

namespace {

constexpr std::size_t kMaxDataFields = 50;
constexpr std::size_t kMaxDedupeKeyChars = 200;
// A claim outlives the SMTP deadline by this much before another job may take the email over.
constexpr std::chrono::milliseconds kClaimMargin{30'000};
// How soon a job that found an email claimed by another looks again.
constexpr std::chrono::milliseconds kClaimRecheck{5'000};

/// A template's text with {{name}} placeholders, filled from the job's data; {{name?fallback}} for optional ones.
struct EmailTemplate {
    std::string_view name;
    std::string_view subject;
    std::string_view body;
};

constexpr std::array kTemplates{
    EmailTemplate{"order_confirmed", "Your order {{order_id}} is confirmed",
                  "Hello {{customer_name?there}},\n\n"
                  "thank you for your order {{order_id}}. We received your payment of {{amount}} {{currency}} "
                  "(charge {{charge_id?-}}) and your order is confirmed.\n\n"
                  "-- Conveyor Shop\n"},
    EmailTemplate{"payment_failed", "Payment for order {{order_id}} failed",
                  "Hello {{customer_name?there}},\n\n"
                  "we could not take the payment for your order {{order_id}}: {{reason}}.\n"
                  "The order has been cancelled and nothing was charged.\n\n"
                  "-- Conveyor Shop\n"},
    EmailTemplate{"order_cancelled", "Your order {{order_id}} is cancelled",
                  "Hello {{customer_name?there}},\n\n"
                  "your order {{order_id}} has been cancelled: {{reason}}.\n"
                  "Its items are back in stock. Should a payment for it reach us after all, we refund it in full.\n\n"
                  "-- Conveyor Shop\n"},
    EmailTemplate{"order_refunded", "Your payment for order {{order_id}} is refunded",
                  "Hello {{customer_name?there}},\n\n"
                  "we refunded {{amount}} {{currency}} for your order {{order_id}} (refund {{refund_id}}).\n"
                  "Depending on your bank it may take a few days to show.\n\n"
                  "-- Conveyor Shop\n"},
    EmailTemplate{"out_of_stock", "Order {{order_id}} could not be placed",
                  "Hello {{customer_name?there}},\n\n"
                  "we are sorry: some products in your order {{order_id}} are out of stock, so it was not placed "
                  "and nothing was charged.\n\n"
                  "-- Conveyor Shop\n"},
};

const EmailTemplate* find_template(std::string_view name) {
    for (const auto& candidate : kTemplates) {
        if (candidate.name == name) {
            return &candidate;
        }
    }
    return nullptr;
}

/// A data value as text: a string as is, a number as JSON writes it.
std::optional<std::string> data_text(simdjson::dom::object data, std::string_view key) {
    simdjson::dom::element value;
    if (data[key].get(value) != simdjson::SUCCESS) {
        return std::nullopt;
    }
    std::string_view text;
    if (value.get(text) == simdjson::SUCCESS) {
        return std::string(text);
    }
    return simdjson::minify(value);
}

/// Fills the placeholders; throws PermanentError naming a required value the data lacks.
std::string render(std::string_view text, simdjson::dom::object data, std::string_view template_name) {
    std::string out;
    while (!text.empty()) {
        const auto open = text.find("{{");
        const auto close = open == std::string_view::npos ? open : text.find("}}", open);
        if (close == std::string_view::npos) {
            out += text;
            break;
        }
        out += text.substr(0, open);
        const auto placeholder = text.substr(open + 2, close - open - 2);
        const auto question = placeholder.find('?');
        const auto key = placeholder.substr(0, question);
        auto value = data_text(data, key);
        if (!value) {
            if (question == std::string_view::npos) {
                throw PermanentError(fmt::format("template {} needs data.{}", template_name, key));
            }
            value = std::string(placeholder.substr(question + 1));
        }
        out += *value;
        text.remove_prefix(close + 2);
    }
    return out;
}

/// Header values come from job data: no line breaks may reach the header block (header injection).
std::string header_safe(std::string_view text) {
    std::string out;
    for (const char c : text) {
        out += (c == '\r' || c == '\n') ? ' ' : c;
    }
    return out;
}

/// RFC 2047 encoded-word for a header that is not plain ASCII.
std::string encoded_header(std::string_view text) {
    const bool ascii =
        std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
    if (ascii) {
        return std::string(text);
    }
    static constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string encoded = "=?UTF-8?B?";
    for (std::size_t i = 0; i < text.size(); i += 3) {
        std::uint32_t chunk = static_cast<unsigned char>(text[i]) << 16;
        if (i + 1 < text.size()) {
            chunk |= static_cast<unsigned char>(text[i + 1]) << 8;
        }
        if (i + 2 < text.size()) {
            chunk |= static_cast<unsigned char>(text[i + 2]);
        }
        encoded += kAlphabet[(chunk >> 18) & 0x3F];
        encoded += kAlphabet[(chunk >> 12) & 0x3F];
        encoded += i + 1 < text.size() ? kAlphabet[(chunk >> 6) & 0x3F] : '=';
        encoded += i + 2 < text.size() ? kAlphabet[chunk & 0x3F] : '=';
    }
    return encoded + "?=";
}

std::string crlf_lines(std::string_view text) {
    std::string out;
    for (const char c : text) {
        if (c == '\n') {
            out += "\r\n";
        } else if (c != '\r') {
            out += c;
        }
    }
    return out;
}

/// A Message-ID that is the same for every attempt of the same email, so a receiving mail system can drop a copy
/// sent twice (SMTP itself has no idempotency).
std::string message_id(std::string_view dedupe_key) {
    std::uint64_t hash = 0xcbf29ce484222325ULL;
    for (const char c : dedupe_key) {
        hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
    }
    return fmt::format("<{:016x}.{}@conveyor>", hash, dedupe_key.size());
}

/// A claim token unique to this run of the job.
std::string claim_token(std::string_view job_id) {
    thread_local std::mt19937_64 generator{std::random_device{}()};
    return fmt::format("{}#{:016x}", job_id, generator());
}

/// The address inside "Name <address>", or the whole text.
std::string envelope_address(std::string_view from) {
    const auto open = from.find('<');
    const auto close = from.rfind('>');
    if (open != std::string_view::npos && close != std::string_view::npos && close > open) {
        return std::string(from.substr(open + 1, close - open - 1));
    }
    return std::string(from);
}

struct SendEmail {
    const EmailTemplate* email_template = nullptr;
    std::string_view to;
    simdjson::dom::object data;
    std::string_view dedupe_key;
};

std::optional<SendEmail> read_send_email(PayloadReader& reader) {
    SendEmail email;
    const auto name = reader.one_of(
        "template", {"order_confirmed", "payment_failed", "order_cancelled", "order_refunded", "out_of_stock"});
    email.email_template = name ? find_template(*name) : nullptr;
    email.to = reader.email("to").value_or("");
    if (const auto data = reader.object("data", Need::required)) {
        email.data = *data;
        if (data->size() > kMaxDataFields) {
            reader.fail(fmt::format("'data' must have at most {} fields", kMaxDataFields));
        }
        for (const auto field : *data) {
            const auto type = field.value.type();
            if (type != simdjson::dom::element_type::STRING && type != simdjson::dom::element_type::INT64 &&
                type != simdjson::dom::element_type::UINT64 && type != simdjson::dom::element_type::DOUBLE) {
                reader.fail(fmt::format("'data.{}' must be a string or a number", field.key));
                break;
            }
        }
    }
    email.dedupe_key = reader.string("dedupe_key", Need::optional, 1, kMaxDedupeKeyChars).value_or("");
    reader.only({"template", "to", "data", "dedupe_key"});
    if (!reader.ok()) {
        return std::nullopt;
    }
    return email;
}

}  // namespace

std::optional<std::string> validate_send_email(simdjson::dom::element payload) {
    PayloadReader reader(payload);
    (void)read_send_email(reader);
    return reader.error();
}

namespace {

/// emails.send: renders the template and delivers it over SMTP, once per dedupe key. The job claims the key in
/// shop.email_log before it talks to the mail server (no transaction is open meanwhile) and marks it sent in its
/// own transaction, with its inbox record. Only a crash between the server's acceptance and that commit sends
/// the email twice, with the same Message-ID, so the receiving side can still tell.
asio::awaitable<Outcome> send_email(JobContext& context, smtp::Client& mailer, const Settings& settings) {
    PayloadReader reader(context.payload());
    const auto email = read_send_email(reader);
    if (!email) {
        Outcome invalid = DeadLetter{"invalid_payload", reader.error().value_or("")};
        co_return invalid;
    }
    const std::string dedupe_key = email->dedupe_key.empty() ? context.job_id() : std::string(email->dedupe_key);
    const auto& chosen = *email->email_template;
    std::string subject;
    std::string body;
    try {
        subject = header_safe(render(chosen.subject, email->data, chosen.name));
        body = render(chosen.body, email->data, chosen.name);
    } catch (const PermanentError& e) {
        subject.clear();
        body = e.what();
    }
    if (subject.empty()) {
        Outcome invalid = DeadLetter{"invalid_payload", body};
        co_return invalid;
    }
    const auto recipient = smtp::masked_address(email->to);
    const auto id = message_id(dedupe_key);
    const auto claim_for = fmt::format("{} milliseconds", (settings.smtp.timeout + kClaimMargin).count());
    // Each run claims under its own token: two copies of the same job must not both send.
    const auto claim = claim_token(context.job_id());
    const auto claimed = co_await context.database().query(
        "INSERT INTO shop.email_log AS l (dedupe_key, template, recipient, subject, message_id, status, claimed_by, "
        "  claimed_until) VALUES ($1, $2, $3, $4, $5, 'sending', $6, now() + $7::interval) "
        "ON CONFLICT (dedupe_key) DO UPDATE SET claimed_by = excluded.claimed_by, "
        "  claimed_until = excluded.claimed_until "
        "WHERE l.status = 'sending' AND l.claimed_until < now() "
        "RETURNING 1",
        dedupe_key, chosen.name, email->to, subject, id, claim, claim_for);
    if (claimed.rows() == 0) {
        const auto state = co_await context.database().query(
            "SELECT status, greatest(0, extract(epoch FROM claimed_until - now()) * 1000)::bigint "
            "FROM shop.email_log WHERE dedupe_key = $1",
            dedupe_key);
        if (state.rows() > 0 && state.text(0, 0) == "sent") {
            context.log().info("{} to {} was sent already (dedupe key {}); not sending again", chosen.name, recipient,
                               dedupe_key);
            co_return Success{};
        }
        // Held by another run (or just released by one that failed): look again soon, as the holder usually
        // finishes long before its claim would expire.
        const auto claim_left =
            state.rows() > 0 ? std::chrono::milliseconds(state.integer(0, 1)) : std::chrono::milliseconds(1000);
        Outcome wait = Retry{std::min(claim_left, kClaimRecheck),
                             fmt::format("another job is sending the email with dedupe key {}", dedupe_key), false};
        co_return wait;
    }
    const auto now = std::time(nullptr);
    std::tm utc{};
    gmtime_r(&now, &utc);
    smtp::Mail mail;
    mail.from = envelope_address(settings.mail_from);
    mail.to = std::string(email->to);
    mail.message = fmt::format(
        "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: {:%a, %d %b %Y %H:%M:%S} +0000\r\nMessage-ID: {}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        "X-Conveyor-Template: {}\r\n\r\n{}",
        header_safe(settings.mail_from), header_safe(email->to), encoded_header(subject), utc, id, chosen.name,
        crlf_lines(body));
    std::optional<smtp::Error> refused;
    {
        auto span = context.span("smtp send");
        span.set("conveyor.email.template", std::string(chosen.name));
        try {
            co_await mailer.send(mail, context.deadline());
        } catch (const smtp::Error& e) {
            refused = e;
            // Not e.what(): the server's reply may quote the address, and spans leave the process.
            span.fail(e.transient() ? "refused for now" : "refused");
        }
    }
    if (refused && refused->maybe_delivered()) {
        // The server may have the mail: the claim stays until it expires, so nothing sends it again sooner.
        context.log().warn(
            "{} to {}: the transfer broke off after the message went out; it is sent again only after "
            "its claim expires",
            chosen.name, recipient);
    } else if (refused) {
        // Refused for sure: the claim goes at once, so that the retry need not wait for it to expire.
        auto release = context.database().query(
            "DELETE FROM shop.email_log WHERE dedupe_key = $1 AND claimed_by = $2 AND status = 'sending'", dedupe_key,
            claim);
        try {
            co_await std::move(release);
        } catch (const pg::Error& e) {
            context.log().warn("could not release the claim on dedupe key {}: {}", dedupe_key, e.what());
        }
    }
    if (refused) {
        const auto error = fmt::format("{} to {}: {}", chosen.name, recipient, refused->what());
        Outcome failure;
        if (refused->transient()) {
            failure = Retry{{}, error};
        } else {
            failure = DeadLetter{"permanent_failure", error};
        }
        co_return failure;
    }
    auto* transaction = co_await context.begin_transaction();
    if (transaction == nullptr) {
        co_return Success{};
    }
    const auto marked = co_await transaction->query(
        "UPDATE shop.email_log SET status = 'sent', sent_at = now() WHERE dedupe_key = $1 AND claimed_by = $2",
        dedupe_key, claim);
    if (marked.affected() == 0) {
        context.log().warn("sent {} to {}, but its claim had expired: another run may send it too", chosen.name,
                           recipient);
    } else {
        context.log().info("sent {} to {}", chosen.name, recipient);
    }
    co_return Success{};
}

}  // namespace

void register_email_jobs(JobRegistry& registry, const Settings& settings) {
    auto mailer = std::make_shared<smtp::Client>(settings.smtp);
    JobOptions options;
    options.transaction = TransactionMode::on_demand;
    options.validate = validate_send_email;
    options.timeout = settings.smtp.timeout + std::chrono::seconds(10);
    registry.add(
        "emails.send",
        [mailer, settings](JobContext& context) -> asio::awaitable<Outcome> {
            auto outcome = co_await send_email(context, *mailer, settings);
            co_return outcome;
        },
        options);
}

}  // namespace conveyor::jobs
