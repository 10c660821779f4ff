#include "console_pages.hpp"

#include <boost/asio/awaitable.hpp>
#include <string>

namespace conveyor::scheduler {

namespace {

HttpResponse page(const EmbeddedFile& file) {
    HttpResponse response{200, std::string(file.content_type), std::string(file.content)};
    response.headers = {{"Content-Security-Policy", std::string(kConsoleContentSecurityPolicy)},
                        {"X-Content-Type-Options", "nosniff"},
                        {"X-Frame-Options", "DENY"},
                        {"Referrer-Policy", "no-referrer"},
                        {"Cache-Control", "no-cache"}};
    return response;
}

}  // namespace

void register_console_pages(HttpServer& server) {
    for (const auto& file : console_files()) {
        const auto serve = [response =
                                page(file)](const HttpRequest& /*request*/) -> boost::asio::awaitable<HttpResponse> {
            co_return response;
        };
        server.route("GET", "/console/" + std::string(file.path), serve);
        if (file.path == "index.html") {
            server.route("GET", "/console", serve);
        }
    }
}

}  // namespace conveyor::scheduler
