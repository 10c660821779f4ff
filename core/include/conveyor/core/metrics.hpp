#pragma once

#include <prometheus/registry.h>

#include <string>

namespace conveyor {

/// The Prometheus text exposition (version 0.0.4) of everything in the registry.
[[nodiscard]] std::string serialize_metrics(const prometheus::Registry& registry);

inline constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace conveyor
