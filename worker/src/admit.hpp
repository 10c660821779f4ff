#pragma once

#include <simdjson.h>

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <optional>
#include <variant>

#include "concurrency.hpp"
#include "control.hpp"
#include "conveyor/core/amqp.hpp"
#include "conveyor/core/envelope.hpp"
#include "conveyor/core/job.hpp"
#include "conveyor/core/trace.hpp"
#include "housekeeping.hpp"
#include "job_source.hpp"
#include "quarantine.hpp"
#include "rate.hpp"
#include "settle.hpp"
#include "unique.hpp"
#include "worker_metrics.hpp"

/// The admit stage: every reason not to run a delivery now, checked before it runs. First what the message alone
/// tells (its envelope, its handler, its payload's schema), then what the worker's state tells (the database the
/// job needs, the poison quarantine).
namespace conveyor::worker {

/// A message that reads as a job this worker has a handler for.
struct Screened {
    Envelope envelope;
    const JobDefinition* definition = nullptr;
};

/// A delivery that must not run, ever: it is dead-lettered with its verdict.
struct Refusal {
    Verdict verdict;
    std::uint32_t attempts = 0;
    std::string type;  ///< the metrics' type label: the job's, or "unknown" for a message that did not parse
    /// Quarantined as poison: its execution record is the evidence, cleared once the dead letter is confirmed.
    bool clear_record = false;
};

/// The log of a job's delivery: its fields on every line. It refers to `envelope`, `delivery` and `trace`.
[[nodiscard]] JobLogger job_logger(const Envelope& envelope, const amqp::Delivery& delivery, const TraceContext& trace);

/// The checks that need nothing but the message. Thread-compatible: one parser per coroutine.
[[nodiscard]] std::variant<Screened, Refusal> screen(const amqp::Message& message, const EnvelopeLimits& limits,
                                                     simdjson::dom::parser& parser, const JobRegistry& registry);

/// A job admitted to run: holds its place in the quarantine gate until the attempt ends.
struct AdmittedJob {
    Envelope envelope;
    const JobDefinition* definition;
    std::optional<Quarantine::Pass> pass;  ///< taken once it has entered the gate
    bool alone = false;                    ///< a suspect, running with no other job beside it
    bool start_on_record = false;          ///< redelivered: its start is recorded, and cleared when the attempt ends
    /// Its place under its key's concurrency limit, freed once the attempt is settled.
    std::optional<ConcurrencyPlace> place;
};

namespace admission {
/// The worker began draining while the job waited: it goes back to the broker.
struct HandBack {};
/// Its delivery's session ended while it waited: the broker has requeued it already.
struct Gone {};
/// Cancelled on request before it ran (it has a tombstone): settled as cancelled without running.
struct Cancelled {
    Envelope envelope;
};
/// Its queue or its type is paused: parked without running.
struct Paused {
    Envelope envelope;
};
/// Another job of its type holds its unique key: discarded without running.
struct Deduplicated {
    Envelope envelope;
};
/// Its key has as many jobs running as its concurrency limit allows, or its rate limit's bucket has no token: it
/// waits in that limit's line.
struct OverLimit {
    Envelope envelope;
    std::variant<ConcurrencyPlace, RateBucket> limit;
};
}  // namespace admission
using Admission = std::variant<AdmittedJob, Refusal, admission::HandBack, admission::Gone, admission::Cancelled,
                               admission::Paused, admission::Deduplicated, admission::OverLimit>;

class Admitter {
  public:
    struct Settings {
        EnvelopeLimits limits;
        unsigned quarantine_after = 0;
    };
    Admitter(const JobRegistry& registry, Settings settings, Quarantine& quarantine, DatabaseHealth& database,
             const JobControl& control, UniqueKeys& unique_keys, ConcurrencyLimits& concurrency, RateLimits& rates,
             const JobSource& source, const std::atomic<bool>& draining)
        : registry_(registry),
          settings_(settings),
          quarantine_(quarantine),
          database_(database),
          control_(control),
          unique_keys_(unique_keys),
          concurrency_(concurrency),
          rates_(rates),
          source_(source),
          draining_(draining) {}

    boost::asio::awaitable<Admission> admit(const amqp::Delivery& delivery, simdjson::dom::parser& parser,
                                            const TraceContext& trace);
    /// Once the worker drains: the jobs waiting for the database or at the quarantine's gate stop waiting and go
    /// back to the broker.
    void stop_waiting() noexcept;

  private:
    /// admit() but for the place under a concurrency limit, which `job` holds once taken (admit() frees it if the job
    /// is not admitted after all).
    boost::asio::awaitable<Admission> admit_job(const amqp::Delivery& delivery, const TraceContext& trace,
                                                AdmittedJob& job);
    /// The flow limits' steps: a place under its key's concurrency limit (held by `job` once taken; `promised` as
    /// the job left the key's line), then a token under its rate limit. Empty if the job may go on.
    boost::asio::awaitable<std::optional<Admission>> take_flow_limits(AdmittedJob& job, bool promised,
                                                                      const JobLogger& log);
    /// A job that will not run now gives up the place it may have been promised as it left its key's waiting line.
    void give_up_promise(const Envelope& envelope, const amqp::Delivery& delivery);
    /// Only a redelivered job can have been running when a worker died: its record says whether it may run, and
    /// how. Empty if the worker began draining while the database was away.
    boost::asio::awaitable<std::optional<Quarantine::History>> judge(const std::string& job_id, const JobLogger& log);
    boost::asio::awaitable<bool> enter_gate(bool alone, const JobLogger& log);
    /// The start must be on record before the job runs: it is the evidence if the job kills the process.
    boost::asio::awaitable<bool> record_start(const AdmittedJob& job, const std::string& queue, const JobLogger& log);
    /// Waits until the probe finds the database usable; false if the worker begins draining first.
    boost::asio::awaitable<bool> database_available(const JobLogger& log);

    const JobRegistry& registry_;
    Settings settings_;
    Quarantine& quarantine_;
    DatabaseHealth& database_;
    const JobControl& control_;
    UniqueKeys& unique_keys_;
    ConcurrencyLimits& concurrency_;
    RateLimits& rates_;
    const JobSource& source_;
    const std::atomic<bool>& draining_;
};

}  // namespace conveyor::worker
