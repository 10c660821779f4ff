// conveyor-scheduler processes for integration tests, and its HTTP API called with the real curl.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "worker_fixture.hpp"

namespace conveyor::testing {

struct SchedulerUnderTest {
    std::unique_ptr<Process> process;
    std::uint16_t port;

    [[nodiscard]] double metric(const std::string& name, const std::vector<std::string>& labels = {}) const {
        auto response = http_get(port, "/metrics");
        return response ? metric_sum(response->second, name, labels) : 0;
    }
    [[nodiscard]] bool ready() const {
        auto response = http_get(port, "/readyz");
        return response && response->first == 200;
    }
    [[nodiscard]] bool leading() const { return metric("conveyor_scheduler_leader") == 1; }
};

struct ApiResponse {
    int status = 0;
    std::map<std::string, std::string> headers;  ///< lower-case names
    std::string body;
};

class SchedulerFixture : public WorkerTest {
  protected:
    SchedulerUnderTest start_scheduler(std::vector<std::string> args, const std::string& log_name) {
        static std::uint16_t next_port = 19560;
        const auto port = next_port++;
        args.insert(args.end(),
                    {"--http-address", "127.0.0.1", "--http-port", std::to_string(port), "--pg-url", app_pg_url()});
        if (std::find(args.begin(), args.end(), "--amqp-url") == args.end()) {
            args.insert(args.end(), {"--amqp-url", amqp_url()});
        }
        const auto log = std::filesystem::temp_directory_path() / ("conveyor-" + log_name + ".log");
        SchedulerUnderTest scheduler{std::make_unique<Process>(binary_dir() / "conveyor-scheduler", args, log), port};
        const bool ready =
            eventually([&] { return scheduler.ready() || !scheduler.process->running(); }, std::chrono::seconds(30));
        if (!ready || !scheduler.process->running()) {
            ADD_FAILURE() << "scheduler did not become ready; its log:\n" << scheduler.process->log();
        }
        return scheduler;
    }

    /// A scheduler whose API takes two tokens: "admin-secret" (ops, admin) and "enqueue-secret" (orders-service,
    /// enqueue).
    SchedulerUnderTest start_scheduler_with_tokens(const std::string& log_name) {
        const auto tokens =
            write_file(log_name + "-tokens", fmt::format(R"(tokens:
  - name: ops
    sha256: {}
    scopes: [admin]
  - name: orders-service
    sha256: {}
    scopes: [enqueue]
)",
                                                         sha256("admin-secret"), sha256("enqueue-secret")));
        return start_scheduler({"--api-tokens-file", tokens.string()}, log_name);
    }

    static void stop(SchedulerUnderTest& scheduler) {
        scheduler.process->signal(SIGTERM);
        const auto status = scheduler.process->wait(std::chrono::seconds(15));
        EXPECT_EQ(status, std::optional<int>(0)) << scheduler.process->log();
    }

    /// A file in the temporary directory with `text` in it (a schedules or tokens file).
    static std::filesystem::path write_file(const std::string& name, const std::string& text) {
        auto path = std::filesystem::temp_directory_path() / ("conveyor-" + name + ".yaml");
        std::ofstream(path) << text;
        return path;
    }

    static std::string sha256(const std::string& secret) {
        auto [status, output] =
            run_command({"/bin/sh", "-c", "printf %s '" + secret + "' | sha256sum"}, std::chrono::seconds(10));
        return output.substr(0, 64);
    }

    /// `headers` are sent as they are ("Cookie: …", "X-CSRF-Token: …").
    static ApiResponse call_api(std::uint16_t port, const std::string& method, const std::string& path,
                                const std::string& token, const std::string& body = {},
                                const std::vector<std::string>& headers = {}) {
        std::vector<std::string> command{"/usr/bin/curl", "-sS", "-i", "-X", method, "-H", "Expect:"};
        if (!token.empty()) {
            command.insert(command.end(), {"-H", "Authorization: Bearer " + token});
        }
        for (const auto& header : headers) {
            command.insert(command.end(), {"-H", header});
        }
        std::filesystem::path body_file;
        if (!body.empty()) {
            // One file per call: clients on several threads call at once.
            static std::atomic<int> calls{0};
            body_file = std::filesystem::temp_directory_path() /
                        fmt::format("conveyor-api-body-{}-{}.json", ::getpid(), calls++);
            std::ofstream(body_file) << body;
            command.insert(command.end(),
                           {"-H", "Content-Type: application/json", "--data-binary", "@" + body_file.string()});
        }
        command.push_back(fmt::format("http://127.0.0.1:{}{}", port, path));
        auto [status, output] = run_command(command, std::chrono::seconds(120));
        if (!body_file.empty()) {
            std::filesystem::remove(body_file);
        }
        EXPECT_EQ(status, 0) << output;
        ApiResponse response;
        std::istringstream stream(output);
        std::string line;
        std::getline(stream, line);
        response.status = line.size() >= 12 ? std::stoi(line.substr(9, 3)) : 0;
        while (std::getline(stream, line) && line != "\r" && !line.empty()) {
            const auto colon = line.find(':');
            auto name = line.substr(0, colon);
            std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
            response.headers[name] = line.substr(colon + 2, line.size() - colon - 3);
        }
        response.body.assign(std::istreambuf_iterator<char>(stream), {});
        return response;
    }
};

}  // namespace conveyor::testing
