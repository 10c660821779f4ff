#pragma once

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/string.hpp>
#include <boost/json/value.hpp>
#include <string_view>

#include "conveyor/core/http_server.hpp"
#include "conveyor/core/pg.hpp"

/// JSON bodies shared by the API's handlers.
namespace conveyor::scheduler {

inline HttpResponse json_response(unsigned status, const boost::json::value& body) {
    return HttpResponse{status, "application/json", boost::json::serialize(body) + "\n"};
}

inline HttpResponse error_response(unsigned status, std::string_view message) {
    return json_response(status, boost::json::object{{"error", message}});
}

inline boost::json::value json_or_null(const pg::Result& rows, int row, int column) {
    if (rows.is_null(row, column)) {
        return nullptr;
    }
    return boost::json::string(rows.text(row, column));
}

}  // namespace conveyor::scheduler
