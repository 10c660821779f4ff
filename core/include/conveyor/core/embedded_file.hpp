#pragma once

#include <string_view>
#include <vector>

namespace conveyor {

/// A file compiled into the binary (cmake/EmbedFiles.cmake): served as it is, from any directory.
struct EmbeddedFile {
    /// Relative to the folder it came from, '/'-separated ("pages/jobs.js").
    std::string_view path;
    std::string_view content_type;
    std::string_view content;
};

}  // namespace conveyor
