#pragma once

#include <vector>

#include "conveyor/core/embedded_file.hpp"
#include "conveyor/core/http_server.hpp"

namespace conveyor::scheduler {

/// The console's files (dashboards/console), compiled in by cmake/EmbedFiles.cmake.
[[nodiscard]] std::vector<EmbeddedFile> console_files();

/// Serves the console under /console (index.html at /console itself), every page with a strict
/// Content-Security-Policy: scripts, styles and requests from this origin only, no inline script, no framing.
void register_console_pages(HttpServer& server);

/// The headers every console page carries.
inline constexpr std::string_view kConsoleContentSecurityPolicy =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

}  // namespace conveyor::scheduler
