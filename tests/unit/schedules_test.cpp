#include "conveyor/scheduler/schedules.hpp"

#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <boost/asio/io_context.hpp>

#include "conveyor/jobs/jobs.hpp"

namespace conveyor::scheduler {
namespace {

const JobCatalogue& catalogue() {
    static const auto validators = jobs::payload_validators();
    return validators;
}

std::string refusal(const std::string& yaml) {
    try {
        (void)parse_schedules(yaml, "schedules.yaml", catalogue());
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "accepted";
}

TEST(Schedules, TheDocumentedExampleParses) {
    const auto schedules = parse_schedules(R"(schedules:
  - name: nightly-rebuild
    cron: "0 30 2 * * *"        # 6 fields with seconds
    timezone: Europe/Berlin
    type: projections.rebuild
    payload: {projection: daily_sales}
    misfire: catch_up
    max_catch_up: 3
  - name: heartbeat
    cron: "@hourly"
    type: diag.sleep
    payload:
      ms: 25
    misfire: skip
    misfire_grace: 30s
)",
                                           "schedules.yaml", catalogue());
    ASSERT_EQ(schedules.size(), 2U);
    EXPECT_EQ(schedules[0].name, "nightly-rebuild");
    EXPECT_EQ(schedules[0].zone.name(), "Europe/Berlin");
    EXPECT_EQ(schedules[0].payload, R"({"projection":"daily_sales"})");
    EXPECT_EQ(schedules[0].misfire, Misfire::catch_up);
    EXPECT_EQ(schedules[0].max_catch_up, 3U);
    EXPECT_EQ(schedules[1].zone.name(), "UTC");
    EXPECT_EQ(schedules[1].payload, R"({"ms":25})");
    EXPECT_EQ(schedules[1].misfire, Misfire::skip);
    EXPECT_EQ(schedules[1].misfire_grace, std::chrono::seconds(30));
    EXPECT_EQ(schedules[1].cron.text(), "@hourly");
}

TEST(Schedules, YamlScalarsBecomeTheJsonTheyRead) {
    const auto schedules = parse_schedules(R"(schedules:
  - name: typed
    cron: "* * * * *"
    type: diag.noop
    payload: {count: 3, ratio: 0.5, on: true, none: null, quoted: "42", text: plain, list: [1, "a"]}
)",
                                           "s.yaml", catalogue());
    EXPECT_EQ(schedules[0].payload,
              R"({"count":3,"ratio":5E-1,"on":true,"none":null,"quoted":"42","text":"plain","list":[1,"a"]})");
}

TEST(Schedules, AFireCanHaveAPriorityAndAUniqueKeyThatKeepsRunsFromOverlapping) {
    const auto schedules = parse_schedules(R"(schedules:
  - name: rebuild
    cron: "*/5 * * * *"
    type: diag.noop
    priority: low
    unique_key: rebuild
    unique_for: 10m
  - name: plain
    cron: "@daily"
    type: diag.noop
)",
                                           "s.yaml", catalogue());
    EXPECT_EQ(schedules[0].priority, "low");
    EXPECT_EQ(schedules[0].unique_key, "rebuild");
    EXPECT_EQ(schedules[0].unique_for, std::chrono::minutes(10));
    EXPECT_EQ(schedules[1].priority, "normal");
    EXPECT_TRUE(schedules[1].unique_key.empty());
    const std::string head = "schedules:\n  - name: a\n    cron: '* * * * *'\n    type: diag.noop\n";
    EXPECT_EQ(refusal(head + "    priority: urgent\n"),
              "schedules.yaml:2: schedule 'a': priority must be high, normal or low, not 'urgent'");
    EXPECT_EQ(refusal(head + "    unique_for: 1h\n"), "schedules.yaml:2: schedule 'a': unique_for needs a unique_key");
    EXPECT_EQ(refusal(head + "    unique_key: a\n    unique_for: soon\n").substr(0, 52),
              "schedules.yaml:2: schedule 'a': unique_for: invalid ");
}

TEST(Schedules, AnEmptyListRunsNoSchedules) {
    EXPECT_TRUE(parse_schedules("schedules: []\n", "s.yaml", catalogue()).empty());
    EXPECT_TRUE(parse_schedules("schedules:\n", "s.yaml", catalogue()).empty());
}

TEST(Schedules, MistakesAreReportedWithFileLineScheduleAndReason) {
    EXPECT_EQ(refusal("jobs: []\n"), "schedules.yaml: expected a top-level 'schedules:' list");
    EXPECT_EQ(refusal("schedules: {a: 1}\n"), "schedules.yaml:1: 'schedules' must be a list");
    EXPECT_EQ(refusal("schedules:\n  - cron: '* * * * *'\n    type: diag.noop\n"),
              "schedules.yaml:2: schedule #1: 'name' is required");
    EXPECT_EQ(refusal("schedules:\n  - name: Bad Name\n    cron: '* * * * *'\n    type: diag.noop\n"),
              "schedules.yaml:2: schedule 'Bad Name': name must be 1-100 characters of a-z, 0-9, '-', '_' and '.'");
    EXPECT_EQ(refusal("schedules:\n  - name: a\n    cron: '* * * * *'\n    type: diag.noop\n    tz: UTC\n"),
              "schedules.yaml:2: schedule 'a': unknown key 'tz' (known: cron, max_catch_up, misfire, "
              "misfire_grace, name, payload, priority, timezone, type, unique_for, unique_key)");
    EXPECT_NE(refusal("schedules:\n  - name: a\n    cron: '0 0 30 2 *'\n    type: diag.noop\n").find("never"),
              std::string::npos);
    EXPECT_EQ(refusal("schedules:\n  - name: a\n    cron: '* * * * *'\n    type: orders.place\n    payload: {}\n")
                  .substr(0, 56),
              "schedules.yaml:2: schedule 'a': invalid payload for orde");
    EXPECT_EQ(refusal("schedules:\n  - name: a\n    cron: '* * * * *'\n    type: diag.noop\n    payload: [1]\n"),
              "schedules.yaml:2: schedule 'a': payload must be a mapping (the job's JSON object)");
    EXPECT_EQ(refusal("schedules:\n  - name: a\n    cron: '* * * * *'\n    type: diag.noop\n    max_catch_up: 0\n"),
              "schedules.yaml:2: schedule 'a': max_catch_up must be a number from 1 to 10000, not '0'");
    EXPECT_EQ(refusal("schedules:\n  - name: a\n    cron: '* * * * *'\n    type: diag.noop\n"
                      "  - name: a\n    cron: '@daily'\n    type: diag.noop\n"),
              "schedules.yaml:5: schedule 'a' is defined twice");
    EXPECT_NE(refusal("schedules:\n  - name: a\n   cron: [\n").find("not valid YAML"), std::string::npos);
}

TEST(Schedules, TheCatalogueKnowsEveryTypeTheWorkerRuns) {
    boost::asio::io_context io;
    prometheus::Registry metrics;
    JobRegistry registry;
    jobs::register_all(registry, jobs::Settings{}, metrics, io.get_executor());
    std::vector<std::string> catalogued;
    for (const auto& entry : catalogue()) {
        catalogued.push_back(entry.first);
    }
    EXPECT_EQ(catalogued, registry.types());
}

TEST(Schedules, CheckJobNamesWhatIsWrong) {
    EXPECT_EQ(check_job(catalogue(), "diag.sleep", R"({"ms": 10})"), std::nullopt);
    EXPECT_EQ(check_job(catalogue(), "diag", "{}"), "'diag' is not a job type; expected <family>.<action>");
    EXPECT_EQ(check_job(catalogue(), "diag.unknown", "{}"), "unknown job type 'diag.unknown'");
    EXPECT_EQ(check_job(catalogue(), "diag.noop", "[]"), "payload must be a JSON object");
    EXPECT_EQ(check_job(catalogue(), "diag.noop", "{").value().substr(0, 26), "payload is not valid JSON:");
    EXPECT_TRUE(check_job(catalogue(), "diag.sleep", R"({"ms": "ten"})")
                    .value()
                    .starts_with("invalid payload for diag.sleep: "));
}

}  // namespace
}  // namespace conveyor::scheduler
