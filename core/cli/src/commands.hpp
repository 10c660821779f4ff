#pragma once

#include <cstdint>
#include <string>

#include "conveyor/core/amqp.hpp"

namespace conveyor::cli {

struct CommonOptions {
    std::string amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    std::string amqp_ca_file;
    std::string log_level = "warn";
};

struct EnqueueOptions {
    std::string type;
    std::string payload = "{}";
    std::uint64_t count = 1;
    double rate = 0;  ///< jobs per second; 0 is as fast as confirms allow
    std::string correlation_id;
    std::string job_id;      ///< only with count 1; default a fresh UUID
    unsigned window = 1000;  ///< publishes awaiting their confirm at once
    bool progress = true;
};

/// The settings a short-lived CLI connection uses: a few quick attempts, then a clear failure.
[[nodiscard]] amqp::ConnectionSettings cli_connection_settings(const CommonOptions& common, std::string name);

int enqueue(const CommonOptions& common, const EnqueueOptions& options);

}  // namespace conveyor::cli
