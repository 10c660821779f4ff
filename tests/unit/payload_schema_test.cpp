#include <gtest/gtest.h>
#include <prometheus/registry.h>
#include <simdjson.h>
#include <sys/wait.h>

#include <array>
#include <boost/asio/io_context.hpp>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/job.hpp"
#include "conveyor/jobs/jobs.hpp"

namespace conveyor {
namespace {

const std::string kSourceDir = CONVEYOR_SOURCE_DIR;
const std::string kSchemaDir = kSourceDir + "/jobs/schemas";

/// One line of check_schemas.py: jsonschema's verdict on sample `index` of a samples file's `section`.
struct SchemaVerdict {
    std::string type;
    std::string section;
    std::size_t index = 0;
    bool accept = false;
};

/// Runs check_schemas.py under Debian's python3, the one that has python3-jsonschema (the python3 on PATH may
/// not), and parses its lines into `verdicts`.
void read_schema_verdicts(std::vector<SchemaVerdict>& verdicts) {
    const std::string command =
        "/usr/bin/python3 '" + kSourceDir + "/tests/unit/check_schemas.py' '" + kSchemaDir + "'";
    FILE* pipe = popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr) << command << ": " << std::strerror(errno);
    std::string output;
    std::array<char, 4096> buffer{};
    for (std::size_t read = 0; (read = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0;) {
        output.append(buffer.data(), read);
    }
    const int status = pclose(pipe);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << command << " failed (wait status " << status << "); its reasons are on stderr";

    std::string_view rest = output;
    while (!rest.empty()) {
        const auto line = rest.substr(0, rest.find('\n'));
        rest.remove_prefix(std::min(rest.size(), line.size() + 1));
        std::vector<std::string_view> fields;
        for (std::string_view remaining = line;;) {
            const auto tab = remaining.find('\t');
            fields.push_back(remaining.substr(0, tab));
            if (tab == std::string_view::npos) {
                break;
            }
            remaining.remove_prefix(tab + 1);
        }
        ASSERT_EQ(fields.size(), 4U) << "malformed line: " << line;
        SchemaVerdict verdict{.type = std::string(fields[0]), .section = std::string(fields[1])};
        const auto [end, errc] = std::from_chars(fields[2].begin(), fields[2].end(), verdict.index);
        ASSERT_TRUE(errc == std::errc() && end == fields[2].end()) << "malformed index: " << line;
        ASSERT_TRUE(verdict.section == "valid" || verdict.section == "invalid") << "malformed section: " << line;
        ASSERT_TRUE(fields[3] == "accept" || fields[3] == "reject") << "malformed verdict: " << line;
        verdict.accept = fields[3] == "accept";
        verdicts.push_back(std::move(verdict));
    }
}

/// The job types as conveyor-worker registers them, with what their registration uses kept alive alongside.
struct WorkerJobs {
    WorkerJobs() { jobs::register_all(registry, jobs::Settings{}, metrics, io.get_executor()); }

    boost::asio::io_context io;
    prometheus::Registry metrics;
    JobRegistry registry;
};

/// Why the worker refuses a payload, or nothing if it runs the job: its envelope refuses a body that is not a JSON
/// object before any validator runs, then the type's validator, if it has one, has its say.
std::optional<std::string> worker_refusal(const JobDefinition& job, simdjson::dom::element payload) {
    if (!payload.is_object()) {
        return "body must be a JSON object";
    }
    if (job.options.validate) {
        return job.options.validate(payload);
    }
    return std::nullopt;
}

const char* verdict_name(bool accept) {
    return accept ? "accept" : "reject";
}

TEST(PayloadSchemas, JsonSchemaJudgesEverySampleAsItsSectionSays) {
    // A sample filed under the wrong section would make the comparison below prove the wrong thing.
    std::vector<SchemaVerdict> verdicts;
    ASSERT_NO_FATAL_FAILURE(read_schema_verdicts(verdicts));
    for (const auto& verdict : verdicts) {
        EXPECT_EQ(verdict.accept, verdict.section == "valid")
            << "jsonschema says " << verdict_name(verdict.accept) << " to " << verdict.type << " " << verdict.section
            << "[" << verdict.index << "]";
    }
}

TEST(PayloadSchemas, EveryRegisteredJobTypeHasASchemaAndEverySchemaARegisteredType) {
    std::vector<SchemaVerdict> verdicts;
    ASSERT_NO_FATAL_FAILURE(read_schema_verdicts(verdicts));
    std::set<std::string> schema_types;
    for (const auto& verdict : verdicts) {
        schema_types.insert(verdict.type);
    }
    const WorkerJobs worker;
    const auto registered = worker.registry.types();
    EXPECT_EQ(std::set<std::string>(registered.begin(), registered.end()), schema_types);
}

TEST(PayloadSchemas, WorkerAcceptsAndRejectsEverySampleAsJsonSchemaDoes) {
    std::vector<SchemaVerdict> verdicts;
    ASSERT_NO_FATAL_FAILURE(read_schema_verdicts(verdicts));
    const WorkerJobs worker;

    simdjson::dom::parser samples_parser;
    simdjson::dom::element samples;
    std::string samples_type;
    simdjson::dom::parser payload_parser;
    std::size_t compared = 0;
    for (const auto& verdict : verdicts) {
        const auto* job = worker.registry.find(verdict.type);
        ASSERT_NE(job, nullptr) << verdict.type << " has a schema but is not registered";
        if (samples_type != verdict.type) {
            const auto path = kSchemaDir + "/samples/" + verdict.type + ".json";
            ASSERT_EQ(samples_parser.load(path).get(samples), simdjson::SUCCESS) << path;
            samples_type = verdict.type;
        }
        auto sample = verdict.section == "valid" ? samples["valid"].at(verdict.index)
                                                 : samples["invalid"].at(verdict.index)["payload"];
        ASSERT_EQ(sample.error(), simdjson::SUCCESS)
            << verdict.type << " " << verdict.section << "[" << verdict.index << "] is not in its samples file";
        // The payload is re-parsed on its own so that the validator sees a document, as it does in the worker.
        const auto text = simdjson::minify(sample.value_unsafe());
        simdjson::dom::element payload;
        ASSERT_EQ(payload_parser.parse(text).get(payload), simdjson::SUCCESS) << text;

        const auto refusal = worker_refusal(*job, payload);
        EXPECT_EQ(!refusal.has_value(), verdict.accept)
            << verdict.type << " " << verdict.section << "[" << verdict.index << "] " << text
            << "\n  jsonschema: " << verdict_name(verdict.accept)
            << "\n  worker:     " << verdict_name(!refusal.has_value()) << (refusal ? " (" + *refusal + ")" : "");
        ++compared;
    }
    // Enough samples that an emptied samples directory cannot pass for agreement.
    EXPECT_GT(compared, 200U);
}

}  // namespace
}  // namespace conveyor
