#include <fmt/format.h>

#include "api.hpp"
#include "api_json.hpp"
#include "conveyor/admin/audit.hpp"

namespace conveyor::scheduler {
namespace asio = boost::asio;

namespace {

std::int64_t integer_param(const HttpRequest& request, std::string_view name, std::int64_t otherwise) {
    const auto text = request.query_param(name);
    if (!text) {
        return otherwise;
    }
    const auto parsed = parse_integer(*text);
    if (!parsed) {
        throw std::invalid_argument(fmt::format("{}: '{}' is not a number", name, *text));
    }
    return *parsed;
}

/// The filter from GET /v1/audit's query parameters: the names `conveyor audit` takes as flags.
audit::Filter audit_filter(const HttpRequest& request) {
    audit::Filter filter;
    filter.actor = request.query_param("actor");
    filter.action = request.query_param("action");
    filter.job_id = request.query_param("job_id");
    filter.limit = integer_param(request, "limit", filter.limit);
    filter.before = integer_param(request, "before", filter.before);
    filter.validate();
    return filter;
}

}  // namespace

asio::awaitable<HttpResponse> EnqueueApi::list_audit(const HttpRequest& request, const Caller& /*caller*/) {
    audit::Filter filter;
    try {
        filter = audit_filter(request);
    } catch (const std::invalid_argument& e) {
        auto response = error_response(400, e.what());
        co_return response;
    }
    const auto entries = co_await audit::list(reads_, filter);
    auto response = json_response(200, audit::to_json(entries, filter));
    co_return response;
}

}  // namespace conveyor::scheduler
