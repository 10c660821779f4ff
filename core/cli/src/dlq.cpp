#include <fmt/format.h>
#include <simdjson.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <iostream>

#include "commands.hpp"
#include "conveyor/admin/dead_letters.hpp"
#include "conveyor/cli/cli.hpp"

namespace conveyor::cli {
namespace asio = boost::asio;

namespace {

constexpr std::size_t kErrorSummary = 60;

std::string summary(std::string_view error) {
    std::string line(error.substr(0, error.find('\n')));
    if (line.size() > kErrorSummary) {
        line = fmt::format("{}…", line.substr(0, kErrorSummary - 1));
    }
    return line;
}

// Written here because neither packaged JSON library pretty-prints: simdjson 3.0.1 (Debian 12) has no prettify,
// Boost.JSON only serializes compactly.
void pretty(std::string& out, simdjson::dom::element element, int depth) {
    const std::string indent(static_cast<std::size_t>(depth) * 2, ' ');
    switch (element.type()) {
        case simdjson::dom::element_type::OBJECT: {
            const auto object = element.get_object().value_unsafe();
            if (object.size() == 0) {
                out += "{}";
                return;
            }
            out += "{\n";
            bool first = true;
            for (const auto field : object) {
                out += first ? "" : ",\n";
                first = false;
                out += indent + "  " + json_string(field.key) + ": ";
                pretty(out, field.value, depth + 1);
            }
            out += "\n" + indent + "}";
            return;
        }
        case simdjson::dom::element_type::ARRAY: {
            const auto array = element.get_array().value_unsafe();
            if (array.size() == 0) {
                out += "[]";
                return;
            }
            out += "[\n";
            bool first = true;
            for (const auto value : array) {
                out += first ? "" : ",\n";
                first = false;
                out += indent + "  ";
                pretty(out, value, depth + 1);
            }
            out += "\n" + indent + "]";
            return;
        }
        default:
            out += simdjson::minify(element);
    }
}

/// The body pretty-printed if it is JSON, as text if it is text, else as hex.
std::string readable_body(std::string_view hex) {
    const auto bytes = dead_letters::decode_body(hex);
    simdjson::dom::parser parser;
    simdjson::dom::element element;
    if (parser.parse(bytes).get(element) == simdjson::SUCCESS) {
        std::string out;
        pretty(out, element, 0);
        return out;
    }
    if (simdjson::validate_utf8(bytes.data(), bytes.size())) {
        return fmt::format("(not JSON) {}", bytes);
    }
    return fmt::format("(not UTF-8, hex) {}", hex);
}

}  // namespace

int dlq_list(const DlqOptions& options) {
    return with_database(options.pg_url, "dlq list", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto rows = co_await dead_letters::list(pool, options.filter, options.limit);
        if (!options.json) {
            std::cout << fmt::format("{:>8}  {:<20}  {:<18}  {:>8}  {:<24}  {}\n", "ID", "TYPE", "REASON", "ATTEMPTS",
                                     "FAILED AT (UTC)", "ERROR");
        }
        for (int row = 0; row < rows.rows(); ++row) {
            if (options.json) {
                std::cout
                    << fmt::format(
                           R"({{"id":{},"job_id":{},"type":{},"family":{},"reason":{},"attempts":{},"failed_at":{},"error":{},"fingerprint":{},"state":{},"correlation_id":{}}})",
                           rows.text(row, 0), json_string(rows.text(row, 1)), json_string(rows.text(row, 2)),
                           json_string(rows.text(row, 3)), json_string(rows.text(row, 4)), rows.text(row, 5),
                           json_string(rows.text(row, 6)), json_string(rows.text(row, 7)),
                           json_string(rows.text(row, 8)), json_string(rows.text(row, 9)), json_or_null(rows, row, 10))
                    << '\n';
            } else {
                std::cout << fmt::format("{:>8}  {:<20}  {:<18}  {:>8}  {:<24}  {}\n", rows.text(row, 0),
                                         rows.text(row, 2), rows.text(row, 4), rows.text(row, 5), rows.text(row, 6),
                                         summary(rows.text(row, 7)));
            }
        }
        if (!options.json && rows.rows() == options.limit) {
            std::cerr << fmt::format("conveyor dlq list: showing the first {}; use --limit for more\n", options.limit);
        }
        co_return kOk;
    });
}

int dlq_show(const std::string& pg_url, std::int64_t id) {
    return with_database(pg_url, "dlq show", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto rows = co_await dead_letters::show(pool, id);
        if (rows.rows() == 0) {
            std::cerr << fmt::format("conveyor dlq show: no dead letter {}\n", id);
            co_return kFailed;
        }
        static constexpr std::array<std::string_view, 14> kLabels = {
            "id",       "job id",    "type",        "family", "queue",         "routing key", "reason",
            "attempts", "failed at", "archived at", "error",  "error pattern", "fingerprint", "correlation id"};
        for (std::size_t column = 0; column < kLabels.size(); ++column) {
            const auto index = static_cast<int>(column);
            std::cout << fmt::format("{:<15} {}\n", fmt::format("{}:", kLabels[column]),
                                     rows.is_null(0, index) ? std::string_view("-") : rows.text(0, index));
        }
        std::cout << fmt::format("{:<15} {}\n", "state:", rows.text(0, 16));
        if (!rows.is_null(0, 17)) {
            std::cout << fmt::format("{:<15} {} by {} as {}\n", "replayed:", rows.text(0, 17), rows.text(0, 18),
                                     rows.text(0, 19));
        }
        std::string headers;
        simdjson::dom::parser parser;
        simdjson::dom::element element;
        if (parser.parse(std::string(rows.text(0, 14))).get(element) == simdjson::SUCCESS) {
            pretty(headers, element, 0);
        }
        std::cout << "headers:\n" << headers << "\npayload:\n" << readable_body(rows.text(0, 15)) << '\n';
        co_return kOk;
    });
}

int dlq_stats(const DlqOptions& options) {
    return with_database(options.pg_url, "dlq stats", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto rows = co_await dead_letters::stats(pool, options.filter);
        std::int64_t total = 0;
        std::string oldest;
        if (!options.json) {
            std::cout << fmt::format("{:<12}  {:<22}  {:<20}  {:>8}  {}\n", "FAMILY", "TYPE", "REASON", "COUNT",
                                     "OLDEST (UTC)");
        }
        for (int row = 0; row < rows.rows(); ++row) {
            total += rows.integer(row, 3);
            const std::string first(rows.text(row, 4));
            if (oldest.empty() || first < oldest) {
                oldest = first;
            }
            if (options.json) {
                std::cout << fmt::format(R"({{"family":{},"type":{},"reason":{},"count":{},"oldest":{}}})",
                                         json_string(rows.text(row, 0)), json_string(rows.text(row, 1)),
                                         json_string(rows.text(row, 2)), rows.text(row, 3),
                                         json_string(rows.text(row, 4)))
                          << '\n';
            } else {
                std::cout << fmt::format("{:<12}  {:<22}  {:<20}  {:>8}  {}\n", rows.text(row, 0), rows.text(row, 1),
                                         rows.text(row, 2), rows.text(row, 3), rows.text(row, 4));
            }
        }
        if (!options.json) {
            std::cout << fmt::format("{} dead letters{}\n", total, oldest.empty() ? "" : ", oldest " + oldest);
        }
        co_return kOk;
    });
}

int dlq_groups(const DlqOptions& options) {
    return with_database(options.pg_url, "dlq groups", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto rows = co_await dead_letters::groups(pool, options.filter);
        for (int row = 0; row < rows.rows(); ++row) {
            if (options.json) {
                std::cout
                    << fmt::format(
                           R"({{"fingerprint":{},"count":{},"pattern":{},"types":{},"first_failed_at":{},"last_failed_at":{},"example":{}}})",
                           json_string(rows.text(row, 0)), rows.text(row, 1), json_string(rows.text(row, 2)),
                           json_string(rows.text(row, 3)), json_string(rows.text(row, 4)),
                           json_string(rows.text(row, 5)), json_string(rows.text(row, 6)))
                    << '\n';
            } else {
                const auto pattern =
                    rows.text(row, 2).empty() ? std::string_view("(no error text)") : rows.text(row, 2);
                std::cout << fmt::format("{}  {:>7} × {}\n{:>26} types {}, {} … {}\n{:>26} e.g. {}\n",
                                         rows.text(row, 0), rows.text(row, 1), pattern, "", rows.text(row, 3),
                                         rows.text(row, 4), rows.text(row, 5), "", summary(rows.text(row, 6)));
            }
        }
        if (!options.json && rows.rows() == 0) {
            std::cerr << "conveyor dlq groups: no dead letters match\n";
        }
        co_return kOk;
    });
}

int dlq_purge(const DlqOptions& options, bool confirmed) {
    return with_database(options.pg_url, "dlq purge", [&](pg::Pool& pool) -> asio::awaitable<int> {
        if (!confirmed) {
            const auto matching = co_await dead_letters::count(pool, options.filter);
            std::cerr << fmt::format("conveyor dlq purge: would delete {} dead letters; add --yes to delete them\n",
                                     matching);
            co_return kUsage;
        }
        const auto purged = co_await dead_letters::purge(pool, options.filter, operator_name());
        const auto& rows = purged.by_type_and_reason;
        for (int row = 0; row < rows.rows(); ++row) {
            std::cout << fmt::format("deleted {:>8}  {:<22}  {}\n", rows.text(row, 2), rows.text(row, 0),
                                     rows.text(row, 1));
        }
        std::cout << fmt::format("deleted {} dead letters\n", purged.deleted);
        co_return kOk;
    });
}

}  // namespace conveyor::cli
