#include "conveyor/core/flow_config.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <boost/json/parse.hpp>
#include <charconv>
#include <cmath>
#include <stdexcept>

#include "conveyor/core/envelope.hpp"

namespace conveyor::flow {
namespace {

class Reader {
  public:
    explicit Reader(std::string_view origin) : origin_(origin) {}

    [[noreturn]] void fail(const YAML::Node& node, std::string_view what) const {
        throw std::invalid_argument(fmt::format("{}:{}: {}", origin_, node.Mark().line + 1, what));
    }

    /// A mapping's entries, each key once and among `known`.
    template <typename Each>
    void entries(const YAML::Node& map, std::string_view what, std::initializer_list<std::string_view> known,
                 Each&& each) const {
        if (!map.IsMap()) {
            fail(map, fmt::format("{} must be a mapping", what));
        }
        std::map<std::string, bool, std::less<>> seen;
        for (const auto& entry : map) {
            const auto name = entry.first.as<std::string>();
            if (known.size() > 0 && std::find(known.begin(), known.end(), name) == known.end()) {
                fail(entry.first,
                     fmt::format("unknown setting '{}' in {} (known: {})", name, what, fmt::join(known, ", ")));
            }
            if (!seen.emplace(name, true).second) {
                fail(entry.first, fmt::format("'{}' is set twice in {}", name, what));
            }
            each(name, entry.second);
        }
    }

    [[nodiscard]] std::int64_t integer(const YAML::Node& node, std::string_view what, std::int64_t low,
                                       std::int64_t high) const {
        const auto text = node.IsScalar() ? node.Scalar() : std::string();
        std::int64_t value = 0;
        const auto* end = text.data() + text.size();
        const auto [rest, error] = std::from_chars(text.data(), end, value);
        if (text.empty() || error != std::errc{} || rest != end || value < low || value > high) {
            fail(node, fmt::format("{} must be a whole number from {} to {}", what, low, high));
        }
        return value;
    }

    [[nodiscard]] double positive_number(const YAML::Node& node, std::string_view what, double high) const {
        const auto text = node.IsScalar() ? node.Scalar() : std::string();
        double value = 0;
        const auto* end = text.data() + text.size();
        const auto [rest, error] = std::from_chars(text.data(), end, value);
        if (text.empty() || error != std::errc{} || rest != end || !(value > 0) || value > high) {
            fail(node, fmt::format("{} must be a number above 0 and at most {}", what, high));
        }
        return value;
    }

    [[nodiscard]] std::string json_pointer(const YAML::Node& node, std::string_view what) const {
        auto text = node.IsScalar() ? node.Scalar() : std::string();
        bool valid = text.size() > 1 && text.front() == '/';
        for (std::size_t i = 0; valid && i < text.size(); ++i) {
            valid = text[i] != '~' || (i + 1 < text.size() && (text[i + 1] == '0' || text[i + 1] == '1'));
        }
        if (!valid) {
            fail(node, fmt::format("{} must be a JSON pointer into the payload, such as /customer_id", what));
        }
        return text;
    }

  private:
    std::string_view origin_;
};

ConcurrencyLimit read_concurrency(const Reader& reader, const YAML::Node& node, const std::string& type) {
    ConcurrencyLimit limit;
    bool has_key = false;
    bool has_limit = false;
    const auto where = fmt::format("{} concurrency", type);
    reader.entries(node, where, {"key", "limit"}, [&](const std::string& name, const YAML::Node& value) {
        if (name == "key") {
            limit.key_pointer = reader.json_pointer(value, fmt::format("{} key", where));
            has_key = true;
        } else {
            limit.limit = static_cast<std::uint32_t>(
                reader.integer(value, fmt::format("{} limit", where), 1, kMaxConcurrencyLimit));
            has_limit = true;
        }
    });
    if (!has_key || !has_limit) {
        reader.fail(node, fmt::format("{} needs both 'key' (a JSON pointer) and 'limit'", where));
    }
    return limit;
}

RateLimit read_rate(const Reader& reader, const YAML::Node& node, const std::string& type) {
    RateLimit limit;
    std::optional<std::uint32_t> burst;
    bool has_rate = false;
    const auto where = fmt::format("{} rate", type);
    reader.entries(node, where, {"per_second", "burst", "key"}, [&](const std::string& name, const YAML::Node& value) {
        if (name == "per_second") {
            limit.per_second = reader.positive_number(value, fmt::format("{} per_second", where), kMaxRate);
            has_rate = true;
        } else if (name == "burst") {
            burst = static_cast<std::uint32_t>(reader.integer(value, fmt::format("{} burst", where), 1, kMaxBurst));
        } else {
            limit.key_pointer = reader.json_pointer(value, fmt::format("{} key", where));
        }
    });
    if (!has_rate) {
        reader.fail(node, fmt::format("{} needs 'per_second' (starts per second across the fleet)", where));
    }
    limit.burst = burst.value_or(default_burst(limit.per_second));
    return limit;
}

}  // namespace

std::uint32_t default_burst(double per_second) {
    return static_cast<std::uint32_t>(std::max(1.0, std::ceil(per_second / 10)));
}

FlowConfig parse(std::string_view yaml, std::string_view origin) {
    YAML::Node document;
    try {
        document = YAML::Load(std::string(yaml));
    } catch (const YAML::Exception& e) {
        throw std::invalid_argument(fmt::format("{}:{}: not valid YAML: {}", origin, e.mark.line + 1, e.msg));
    }
    FlowConfig config;
    if (!document || document.IsNull()) {
        return config;
    }
    const Reader reader(origin);
    reader.entries(document, "the flow file", {"jobs"}, [&](const std::string&, const YAML::Node& jobs) {
        if (jobs.IsNull()) {
            return;
        }
        reader.entries(jobs, "'jobs'", {}, [&](const std::string& type, const YAML::Node& settings) {
            if (!is_valid_job_type(type)) {
                reader.fail(settings, fmt::format("'{}' is not a job type (family.action, e.g. orders.place)", type));
            }
            TypeLimits limits;
            reader.entries(settings, type, {"concurrency", "rate"},
                           [&](const std::string& name, const YAML::Node& value) {
                               if (name == "concurrency") {
                                   limits.concurrency = read_concurrency(reader, value, type);
                               } else {
                                   limits.rate = read_rate(reader, value, type);
                               }
                           });
            config.jobs.emplace(type, std::move(limits));
        });
    });
    return config;
}

namespace {

// A whole rate as an integer: boost::json writes every double in exponent form (50 as 5E1).
boost::json::value rate_json(double per_second) {
    if (per_second == std::floor(per_second)) {
        return static_cast<std::int64_t>(per_second);
    }
    return per_second;
}

}  // namespace

boost::json::object to_json(const FlowConfig& config) {
    boost::json::object jobs;
    for (const auto& [type, limits] : config.jobs) {
        boost::json::object settings;
        if (limits.concurrency) {
            settings["concurrency"] = {{"key", limits.concurrency->key_pointer}, {"limit", limits.concurrency->limit}};
        }
        if (limits.rate) {
            boost::json::object rate{{"per_second", rate_json(limits.rate->per_second)}, {"burst", limits.rate->burst}};
            if (!limits.rate->key_pointer.empty()) {
                rate["key"] = limits.rate->key_pointer;
            }
            settings["rate"] = std::move(rate);
        }
        jobs[type] = std::move(settings);
    }
    return {{"jobs", std::move(jobs)}};
}

boost::asio::awaitable<Stored> apply(pg::Pool& pool, const std::string& source, const std::string& by) {
    const auto stored = co_await pool.query(
        "WITH newest AS (SELECT version, source FROM conveyor.flow_config ORDER BY version DESC LIMIT 1), "
        "inserted AS (INSERT INTO conveyor.flow_config (source, applied_by) SELECT $1, $2 "
        "WHERE NOT EXISTS (SELECT 1 FROM newest WHERE source = $1) RETURNING version), "
        "audited AS (INSERT INTO conveyor.audit_log (actor, action, target, details) "
        "SELECT $2, 'apply_flow_limits', 'version ' || version, jsonb_build_object('version', version) FROM inserted) "
        "SELECT version, true FROM inserted UNION ALL SELECT version, false FROM newest WHERE source = $1",
        source, by);
    co_return Stored{stored.integer(0, 0), stored.text(0, 1) == "t"};
}

boost::asio::awaitable<std::optional<Applied>> newest(pg::Pool& pool, std::int64_t after) {
    const auto rows = co_await pool.query(
        "SELECT version, source, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
        "applied_by FROM conveyor.flow_config WHERE version > $1 ORDER BY version DESC LIMIT 1",
        after);
    if (rows.rows() == 0) {
        co_return std::nullopt;
    }
    co_return Applied{rows.integer(0, 0), std::string(rows.text(0, 1)), std::string(rows.text(0, 2)),
                      std::string(rows.text(0, 3))};
}

boost::json::object to_json(const Applied& applied, const FlowConfig& config) {
    return {{"version", applied.version},
            {"applied_at", applied.applied_at},
            {"applied_by", applied.applied_by},
            {"limits", to_json(config)},
            {"source", applied.source}};
}

boost::asio::awaitable<boost::json::value> held_back(pg::Pool& pool) {
    const auto rows = co_await pool.query(
        "WITH lines AS (SELECT 'concurrency' AS kind, job_type, count(*) AS waiting, "
        "count(DISTINCT concurrency_key) AS keys, min(waiting_since) AS oldest FROM conveyor.concurrency_waiting "
        "WHERE released_at IS NULL GROUP BY job_type "
        "UNION ALL SELECT 'rate', job_type, count(*), count(DISTINCT rate_key), min(waiting_since) "
        "FROM conveyor.rate_waiting WHERE released_at IS NULL GROUP BY job_type), "
        "places AS (SELECT 'concurrency' AS kind, job_type, count(*) AS running FROM conveyor.concurrency_slots "
        "WHERE expires_at > now() GROUP BY job_type) "
        "SELECT coalesce(json_agg(json_build_object('type', job_type, 'kind', kind, 'waiting', "
        "coalesce(waiting, 0), 'keys', coalesce(keys, 0), 'oldest_waiting_since', "
        "to_char(oldest AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), 'running', running) "
        "ORDER BY job_type, kind), '[]')::text FROM lines FULL JOIN places USING (kind, job_type)");
    co_return boost::json::parse(rows.text(0, 0));
}

}  // namespace conveyor::flow
