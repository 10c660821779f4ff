#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <iostream>
#include <optional>
#include <thread>

#include "conveyor/core/logging.hpp"
#include "conveyor/jobs/jobs.hpp"
#include "conveyor/scheduler/scheduler.hpp"

int main(int argc, char** argv) {
    namespace asio = boost::asio;
    namespace scheduler = conveyor::scheduler;
    auto parsed = scheduler::parse_scheduler_settings({argv, static_cast<std::size_t>(argc)}, std::cout, std::cerr);
    if (!parsed.settings) {
        return parsed.exit_code;
    }
    const auto settings = *parsed.settings;
    conveyor::setup_logging(settings.log_level, conveyor::parse_log_format(settings.log_format));

    auto catalogue = conveyor::jobs::payload_validators();
    std::vector<scheduler::Schedule> schedules;
    std::optional<scheduler::Authenticator> authenticator;
    try {
        if (!settings.schedules_file.empty()) {
            schedules = scheduler::load_schedules(settings.schedules_file, catalogue);
        }
        authenticator.emplace(scheduler::load_authenticator(settings));
    } catch (const std::invalid_argument& e) {
        std::cerr << "conveyor-scheduler: " << e.what() << '\n';
        return 2;
    }

    asio::io_context io(static_cast<int>(settings.threads));
    std::optional<scheduler::Scheduler> built;
    try {
        built.emplace(io, settings, std::move(catalogue), std::move(schedules), std::move(*authenticator),
                      std::make_shared<prometheus::Registry>());
    } catch (const std::invalid_argument& e) {
        std::cerr << "conveyor-scheduler: " << e.what() << '\n';
        return 2;
    }
    auto& service = *built;
    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](boost::system::error_code error, int signal) {
        if (!error) {
            spdlog::info("received signal {}; shutting down", signal);
            service.shutdown();
        }
    });
    int exit_code = 0;
    asio::co_spawn(io, service.run(), [&](const std::exception_ptr& error) {
        if (error) {
            conveyor::log_failure("scheduler")(error);
            exit_code = 1;
        }
        io.stop();
    });
    std::vector<std::jthread> threads;
    for (unsigned i = 1; i < settings.threads; ++i) {
        threads.emplace_back([&io] { io.run(); });
    }
    io.run();
    threads.clear();
    return exit_code;
}
