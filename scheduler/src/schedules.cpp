#include "conveyor/scheduler/schedules.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <boost/json/serialize.hpp>
#include <boost/json/string.hpp>
#include <boost/json/value.hpp>
#include <charconv>
#include <set>

#include "conveyor/core/config.hpp"
#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor::scheduler {

namespace {

const std::set<std::string_view> kKnownKeys = {"name",     "cron",       "timezone",     "type",
                                               "payload",  "misfire",    "max_catch_up", "misfire_grace",
                                               "priority", "unique_key", "unique_for"};

/// Names appear in metric labels, logs and idempotency keys: keep them short and plain.
bool is_valid_name(std::string_view name) {
    return !name.empty() && name.size() <= 100 && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
    });
}

template <typename Number>
bool parse_number(const std::string& text, Number& value) {
    const auto* end = text.data() + text.size();
    const auto [rest, error] = std::from_chars(text.data(), end, value);
    return error == std::errc{} && rest == end;
}

/// YAML to JSON: a quoted scalar stays a string; a plain one becomes null, a boolean or a number when it reads as
/// one (YAML 1.2 core schema), else a string.
boost::json::value to_json(const YAML::Node& node) {
    switch (node.Type()) {
        case YAML::NodeType::Map: {
            boost::json::object object;
            for (const auto& entry : node) {
                object[entry.first.as<std::string>()] = to_json(entry.second);
            }
            return object;
        }
        case YAML::NodeType::Sequence: {
            boost::json::array array;
            for (const auto& element : node) {
                array.push_back(to_json(element));
            }
            return array;
        }
        case YAML::NodeType::Null:
        case YAML::NodeType::Undefined:
            return nullptr;
        case YAML::NodeType::Scalar:
            break;
    }
    const auto& text = node.Scalar();
    if (node.Tag() == "!") {
        return boost::json::string(text);
    }
    if (text == "~" || text == "null" || text == "Null" || text == "NULL") {
        return nullptr;
    }
    if (text == "true" || text == "True" || text == "TRUE") {
        return true;
    }
    if (text == "false" || text == "False" || text == "FALSE") {
        return false;
    }
    if (std::int64_t integer = 0; parse_number(text, integer)) {
        return integer;
    }
    if (double real = 0; parse_number(text, real)) {
        return real;
    }
    return boost::json::string(text);
}

class EntryReader {
  public:
    EntryReader(const YAML::Node& entry, std::string_view origin, std::size_t index)
        : entry_(entry), where_(fmt::format("{}:{}", origin, entry.Mark().line + 1)), index_(index) {}

    [[noreturn]] void fail(std::string_view what) const {
        const auto label =
            name_.empty() ? fmt::format("schedule #{}", index_ + 1) : fmt::format("schedule '{}'", name_);
        throw std::invalid_argument(fmt::format("{}: {}: {}", where_, label, what));
    }

    std::string required(const char* key) {
        const auto node = entry_[key];
        if (!node || node.IsNull()) {
            fail(fmt::format("'{}' is required", key));
        }
        if (!node.IsScalar()) {
            fail(fmt::format("'{}' must be a string", key));
        }
        return node.Scalar();
    }

    std::string optional(const char* key, std::string fallback) {
        const auto node = entry_[key];
        if (!node || node.IsNull()) {
            return fallback;
        }
        if (!node.IsScalar()) {
            fail(fmt::format("'{}' must be a string", key));
        }
        return node.Scalar();
    }

    void set_name(std::string name) { name_ = std::move(name); }

  private:
    const YAML::Node& entry_;
    std::string where_;
    std::size_t index_;
    std::string name_;
};

/// The job each fire enqueues: its type, payload, priority band and unique key.
void read_job(EntryReader& reader, const YAML::Node& entry, const JobCatalogue& catalogue, Schedule& schedule) {
    schedule.type = reader.required("type");
    const auto payload = entry["payload"];
    if (payload && !payload.IsNull() && !payload.IsMap()) {
        reader.fail("payload must be a mapping (the job's JSON object)");
    }
    schedule.payload = payload && payload.IsMap() ? boost::json::serialize(to_json(payload)) : std::string("{}");
    if (auto refusal = check_job(catalogue, schedule.type, schedule.payload)) {
        reader.fail(*refusal);
    }
    schedule.priority = reader.optional("priority", "normal");
    if (!topology::parse_band(schedule.priority)) {
        reader.fail(fmt::format("priority must be high, normal or low, not '{}'", schedule.priority));
    }
    schedule.unique_key = reader.optional("unique_key", "");
    if (schedule.unique_key.size() > job_headers::kMaxUniqueKeyBytes) {
        reader.fail(fmt::format("unique_key must be at most {} bytes", job_headers::kMaxUniqueKeyBytes));
    }
    const auto unique_for = reader.optional("unique_for", "");
    if (!unique_for.empty() && schedule.unique_key.empty()) {
        reader.fail("unique_for needs a unique_key");
    }
    try {
        schedule.unique_for = std::chrono::duration_cast<std::chrono::seconds>(
            parse_duration(unique_for.empty() ? std::string("0s") : unique_for));
    } catch (const std::invalid_argument& e) {
        reader.fail(fmt::format("unique_for: {}", e.what()));
    }
    if (schedule.unique_for.count() > job_headers::kMaxUniqueForSeconds) {
        reader.fail("unique_for must be at most 10 years");
    }
}

void read_misfire(EntryReader& reader, Schedule& schedule) {
    const auto misfire = reader.optional("misfire", "catch_up");
    if (misfire == "catch_up") {
        schedule.misfire = Misfire::catch_up;
    } else if (misfire == "skip") {
        schedule.misfire = Misfire::skip;
    } else {
        reader.fail(fmt::format("misfire must be catch_up or skip, not '{}'", misfire));
    }
    const auto max_catch_up = reader.optional("max_catch_up", "10");
    if (!parse_number(max_catch_up, schedule.max_catch_up) || schedule.max_catch_up < 1 ||
        schedule.max_catch_up > 10'000) {
        reader.fail(fmt::format("max_catch_up must be a number from 1 to 10000, not '{}'", max_catch_up));
    }
    try {
        schedule.misfire_grace = parse_duration(reader.optional("misfire_grace", "5s"));
    } catch (const std::invalid_argument& e) {
        reader.fail(fmt::format("misfire_grace: {}", e.what()));
    }
}

Schedule parse_entry(const YAML::Node& entry, std::string_view origin, std::size_t index,
                     const JobCatalogue& catalogue) {
    EntryReader reader(entry, origin, index);
    if (!entry.IsMap()) {
        reader.fail("expected a mapping with name, cron, type");
    }
    Schedule schedule;
    schedule.name = reader.required("name");
    reader.set_name(schedule.name);
    if (!is_valid_name(schedule.name)) {
        reader.fail("name must be 1-100 characters of a-z, 0-9, '-', '_' and '.'");
    }
    for (const auto& key : entry) {
        const auto text = key.first.as<std::string>();
        if (!kKnownKeys.contains(text)) {
            reader.fail(fmt::format("unknown key '{}' (known: {})", text, fmt::join(kKnownKeys, ", ")));
        }
    }
    try {
        schedule.cron = CronExpression::parse(reader.required("cron"));
        schedule.zone = TimeZone::locate(reader.optional("timezone", "UTC"));
    } catch (const std::invalid_argument& e) {
        reader.fail(e.what());
    }
    read_job(reader, entry, catalogue, schedule);
    read_misfire(reader, schedule);
    return schedule;
}

}  // namespace

std::string_view to_string(Misfire misfire) noexcept {
    return misfire == Misfire::catch_up ? "catch_up" : "skip";
}

std::vector<Schedule> parse_schedules(std::string_view yaml, std::string_view origin, const JobCatalogue& catalogue) {
    YAML::Node document;
    try {
        document = YAML::Load(std::string(yaml));
    } catch (const YAML::Exception& e) {
        throw std::invalid_argument(fmt::format("{}:{}: not valid YAML: {}", origin, e.mark.line + 1, e.msg));
    }
    if (!document.IsMap() || !document["schedules"]) {
        throw std::invalid_argument(fmt::format("{}: expected a top-level 'schedules:' list", origin));
    }
    const auto list = document["schedules"];
    if (list.IsNull()) {
        return {};
    }
    if (!list.IsSequence()) {
        throw std::invalid_argument(fmt::format("{}:{}: 'schedules' must be a list", origin, list.Mark().line + 1));
    }
    std::vector<Schedule> schedules;
    std::set<std::string> names;
    for (std::size_t index = 0; index < list.size(); ++index) {
        const auto entry = list[index];
        auto schedule = parse_entry(entry, origin, index, catalogue);
        if (!names.insert(schedule.name).second) {
            throw std::invalid_argument(
                fmt::format("{}:{}: schedule '{}' is defined twice", origin, entry.Mark().line + 1, schedule.name));
        }
        schedules.push_back(std::move(schedule));
    }
    return schedules;
}

std::vector<Schedule> load_schedules(const std::string& path, const JobCatalogue& catalogue) {
    return parse_schedules(read_config_file(path, "schedules file"), path, catalogue);
}

}  // namespace conveyor::scheduler
