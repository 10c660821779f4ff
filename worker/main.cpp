#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <iostream>
#include <thread>

#include "conveyor/core/logging.hpp"
#include "conveyor/jobs/jobs.hpp"
#include "conveyor/worker/worker.hpp"

int main(int argc, char** argv) {
    namespace asio = boost::asio;
    conveyor::jobs::Settings job_settings;
    auto parsed = conveyor::worker::parse_worker_settings(
        {argv, static_cast<std::size_t>(argc)}, std::cout, std::cerr,
        [&job_settings](CLI::App& app) { conveyor::jobs::add_options(app, job_settings); });
    if (!parsed.settings) {
        return parsed.exit_code;
    }
    const auto settings = *parsed.settings;
    conveyor::setup_logging(settings.log_level, conveyor::parse_log_format(settings.log_format));

    asio::io_context io(static_cast<int>(settings.threads));
    auto metrics = std::make_shared<prometheus::Registry>();
    conveyor::JobRegistry registry;
    try {
        conveyor::jobs::register_all(registry, job_settings, *metrics, io.get_executor());
    } catch (const std::invalid_argument& e) {
        std::cerr << "conveyor-worker: " << e.what() << "\nRun with --help for more information.\n";
        return 2;
    }
    conveyor::worker::Worker worker(io, settings, registry, metrics);
    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](boost::system::error_code error, int signal) {
        if (!error) {
            spdlog::info("received signal {}; draining", signal);
            worker.shutdown();
        }
    });
    int exit_code = 0;
    asio::co_spawn(io, worker.run(), [&](const std::exception_ptr& error, const conveyor::worker::WorkerStats&) {
        if (error) {
            conveyor::log_failure("worker")(error);
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
