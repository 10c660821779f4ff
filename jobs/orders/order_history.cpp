#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <iostream>
#include <memory>

#include "conveyor/jobs/commands.hpp"

namespace conveyor::jobs {
namespace asio = boost::asio;

namespace {

struct HistoryOptions {
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    std::string order_id;
    bool json = false;
};

constexpr std::string_view kUtcMilliseconds = R"(YYYY-MM-DD"T"HH24:MI:SS.MS"Z")";

void print_events(const pg::Result& events) {
    std::cout << fmt::format("{:>7}  {:<24}  {:<20}  {}\n", "VERSION", "OCCURRED (UTC)", "EVENT", "DATA");
    for (int row = 0; row < events.rows(); ++row) {
        std::cout << fmt::format("{:>7}  {:<24}  {:<20}  {}\n", events.integer(row, 0), events.text(row, 2),
                                 events.text(row, 1), events.text(row, 3));
    }
}

void print_text(const pg::Result& order, const pg::Result& events, const pg::Result& stock_events) {
    const auto reason = order.text(0, 1);
    std::cout << fmt::format("order {}: {}{}  (customer {}, {} {}.{:02})\n", order.text(0, 2), order.text(0, 0),
                             reason.empty() ? std::string() : fmt::format(" ({})", reason), order.text(0, 3),
                             order.text(0, 4), order.integer(0, 5) / 100, order.integer(0, 5) % 100);
    print_events(events);
    if (stock_events.rows() > 0) {
        std::cout << "its stock (inventory):\n";
        print_events(stock_events);
    }
}

boost::json::array events_json(const pg::Result& events) {
    boost::json::array listed;
    for (int row = 0; row < events.rows(); ++row) {
        listed.push_back({{"version", events.integer(row, 0)},
                          {"type", events.text(row, 1)},
                          {"occurred_at", events.text(row, 2)},
                          {"data", boost::json::parse(events.text(row, 3))}});
    }
    return listed;
}

void print_json(const pg::Result& order, const pg::Result& events, const pg::Result& stock_events) {
    const auto reason = order.text(0, 1);
    boost::json::object shown{{"order_id", order.text(0, 2)},
                              {"status", order.text(0, 0)},
                              {"status_reason", reason.empty() ? boost::json::value() : boost::json::value(reason)},
                              {"customer_id", order.text(0, 3)},
                              {"currency", order.text(0, 4)},
                              {"total_cents", order.integer(0, 5)},
                              {"events", events_json(events)},
                              {"stock_events", events_json(stock_events)}};
    std::cout << boost::json::serialize(shown) << '\n';
}

int order_history(const HistoryOptions& options) {
    return cli::with_database(options.pg_url, "orders history", [&](pg::Pool& pool) -> asio::awaitable<int> {
        const auto order = co_await pool.query(
            "SELECT status::text, coalesce(status_reason, ''), id, customer_id, currency, total_cents "
            "FROM shop.orders WHERE id = $1",
            options.order_id);
        if (order.rows() == 0) {
            std::cerr << fmt::format("conveyor orders history: no order '{}'\n", options.order_id);
            co_return cli::kFailed;
        }
        const auto format = std::string(kUtcMilliseconds);
        const auto events = co_await pool.query(
            "SELECT version, type, to_char(occurred_at AT TIME ZONE 'UTC', $2), data::text FROM shop.events "
            "WHERE aggregate_id = $1 ORDER BY version",
            options.order_id, format);
        // The reservation's own trail, kept by inventory under the order's id: where its stock went.
        const auto stock_events = co_await pool.query(
            "SELECT version, type, to_char(occurred_at AT TIME ZONE 'UTC', $2), data::text FROM inventory.events "
            "WHERE aggregate_id = $1 ORDER BY version",
            options.order_id, format);
        if (options.json) {
            print_json(order, events, stock_events);
        } else {
            print_text(order, events, stock_events);
        }
        co_return cli::kOk;
    });
}

}  // namespace

std::vector<cli::Command> cli_commands() {
    auto options = std::make_shared<HistoryOptions>();
    if (const char* url = std::getenv("CONVEYOR_PG_URL"); url != nullptr && *url != '\0') {
        options->pg_url = url;
    }
    cli::Command history;
    history.add = [options](CLI::App& app) {
        auto* orders = app.add_subcommand("orders", "The shop's orders, as the job families keep them");
        orders->require_subcommand(1);
        auto* show = orders->add_subcommand(
            "history",
            "An order's status and its events from the event store (the audit trail), in order, then its stock's");
        show->add_option("order_id", options->order_id, "The order's id")->required();
        show->add_option("--pg-url", options->pg_url, "PostgreSQL URL")
            ->envname("CONVEYOR_PG_URL")
            ->default_str("postgresql://postgres@127.0.0.1:5432/conveyor");
        show->add_flag("--json", options->json, "One JSON object: the order, its events and its stock's events");
        return show;
    };
    history.run = [options] { return order_history(*options); };
    return {std::move(history)};
}

}  // namespace conveyor::jobs
