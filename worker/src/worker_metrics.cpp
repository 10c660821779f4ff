#include "worker_metrics.hpp"

#include "conveyor/core/topology.hpp"

namespace conveyor::worker {

namespace {

prometheus::Histogram::BucketBoundaries seconds_buckets() {
    return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
}

/// From the delay ladder's resolution (1 s) to its longest (about 48 days).
prometheus::Histogram::BucketBoundaries delay_buckets() {
    return {1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400, 30 * 86400};
}

}  // namespace

WorkerMetrics::WorkerMetrics(prometheus::Registry& registry, const std::vector<std::string>& families,
                             const JobRegistry& jobs)
    : started_(prometheus::BuildCounter()
                   .Name("conveyor_jobs_started_total")
                   .Help("Jobs whose handler started")
                   .Register(registry)),
      completed_(prometheus::BuildCounter()
                     .Name("conveyor_jobs_completed_total")
                     .Help("Jobs settled, by outcome (success, retry, dead_letter, duplicate, cancelled, deduplicated)")
                     .Register(registry)),
      duration_(prometheus::BuildHistogram()
                    .Name("conveyor_job_duration_seconds")
                    .Help("Handler run time")
                    .Register(registry)),
      queue_wait_(prometheus::BuildHistogram()
                      .Name("conveyor_job_queue_wait_seconds")
                      .Help("Time from enqueue (x-conveyor-enqueued-at) to handler start")
                      .Register(registry)),
      retry_delay_(prometheus::BuildHistogram()
                       .Name("conveyor_job_retry_delay_seconds")
                       .Help("Delay chosen for each retry, which the job then waits in the delay ladder")
                       .Register(registry)),
      in_flight_(prometheus::BuildGauge()
                     .Name("conveyor_jobs_in_flight")
                     .Help("Jobs whose handler is running")
                     .Register(registry)),
      parked_(
          prometheus::BuildCounter()
              .Name("conveyor_jobs_parked_total")
              .Help(
                  "Jobs held back without running, burning no attempt, by reason: parked in the delay ladder (paused, "
                  "shutdown), or in the waiting line of a concurrency key (concurrency_limit) or of a rate limit's "
                  "bucket (rate_limit)")
              .Register(registry)),
      queue_paused_(prometheus::BuildGauge()
                        .Name("conveyor_queue_paused")
                        .Help("1 while the whole queue is paused: no worker starts its jobs")
                        .Register(registry)),
      types_paused_(prometheus::BuildGauge()
                        .Name("conveyor_job_types_paused")
                        .Help("Job types of the queue paused on their own, whose jobs no worker starts")
                        .Register(registry)),
      broker_connected_(prometheus::BuildGauge()
                            .Name("conveyor_broker_connected")
                            .Help("1 while the worker's broker connections are up")
                            .Register(registry)
                            .Add({})),
      publish_confirm_(prometheus::BuildHistogram()
                           .Name("conveyor_publish_confirm_seconds")
                           .Help("Time from basic.publish to the broker's confirm")
                           .Register(registry)),
      outbox_pending_(prometheus::BuildGauge()
                          .Name("conveyor_outbox_pending")
                          .Help("Rows in conveyor.outbox: emitted jobs not yet published")
                          .Register(registry)
                          .Add({})),
      workers_needed_(prometheus::BuildGauge()
                          .Name("conveyor_workers_needed")
                          .Help("Workers (pods) the backlog needs at this worker's concurrency, from ready messages, "
                                "arrival rate and p95 job duration; cluster-wide, so aggregate with max()")
                          .Register(registry)
                          .Add({})),
      history_written_(prometheus::BuildCounter()
                           .Name("conveyor_history_written_total")
                           .Help("Job history events written to conveyor.job_events")
                           .Register(registry)
                           .Add({})),
      history_dropped_(prometheus::BuildCounter()
                           .Name("conveyor_history_dropped_total")
                           .Help("Job history events dropped because the buffer was full while PostgreSQL was away")
                           .Register(registry)
                           .Add({})),
      history_buffered_(prometheus::BuildGauge()
                            .Name("conveyor_history_buffered")
                            .Help("Job history events waiting to be written")
                            .Register(registry)
                            .Add({})),
      flow_waiting_jobs_(prometheus::BuildGauge()
                             .Name("conveyor_flow_waiting_jobs")
                             .Help("Jobs waiting in line for a place under a per-key concurrency limit "
                                   "(limit=\"concurrency\") or for a rate limit's token (limit=\"rate\"); "
                                   "fleet-wide, so aggregate with max()")
                             .Register(registry)),
      flow_waiting_keys_(prometheus::BuildGauge()
                             .Name("conveyor_flow_waiting_keys")
                             .Help("Keys (concurrency keys, or rate limit buckets) with jobs waiting in line; "
                                   "fleet-wide, so aggregate with max()")
                             .Register(registry)),
      flow_rate_tokens_(
          prometheus::BuildGauge()
              .Name("conveyor_flow_rate_tokens")
              .Help("Whole tokens a rate-limited job type's buckets could grant now (summed over its keys; "
                    "released jobs on their way hold part of the burst); fleet-wide, so aggregate "
                    "with max()")
              .Register(registry)),
      flow_version_(prometheus::BuildGauge()
                        .Name("conveyor_flow_version")
                        .Help("Version of the flow limits (conveyor flow apply) in force in this worker; 0: none")
                        .Register(registry)
                        .Add({})),
      group_commit_jobs_(prometheus::BuildHistogram()
                             .Name("conveyor_group_commit_jobs")
                             .Help("Jobs per committed group of the group commit (its count: the commits)")
                             .Register(registry)
                             .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64})),
      group_commit_failed_(prometheus::BuildCounter()
                               .Name("conveyor_group_commit_failed_total")
                               .Help("Groups whose transaction failed; each of their jobs ran again alone")
                               .Register(registry)
                               .Add({})),
      group_commit_taken_out_(prometheus::BuildCounter()
                                  .Name("conveyor_group_commit_taken_out_total")
                                  .Help("Jobs taken out of their group by a lock wait or conflict, run again alone")
                                  .Register(registry)
                                  .Add({})) {
    for (const auto& family : families) {
        const auto queue = topology::queue_name(family);
        for (const auto& type : jobs.types_of_family(family)) {
            by_type_.emplace(type, make_job(queue, type));
        }
        unknown_by_queue_.emplace(queue, make_job(queue, "unknown"));
        // Every band of a family counts under the family's queue: the normal band, which keeps its name.
        auto* in_flight = &in_flight_.Add({{"queue", queue}});
        for (const auto band : topology::kBands) {
            in_flight_by_queue_.emplace(topology::queue_name(family, band), in_flight);
        }
        queue_paused(queue).Set(0);
        types_paused(queue).Set(0);
    }
    // After every insertion: the maps' nodes, and so these pointers, stay put from here on.
    for (const auto& family : families) {
        const auto queue = topology::queue_name(family);
        auto& jobs_of_queue = jobs_by_queue_[queue];
        for (const auto& type : jobs.types_of_family(family)) {
            jobs_of_queue.push_back(&by_type_.at(type));
        }
        jobs_of_queue.push_back(&unknown_by_queue_.at(queue));
        for (const auto band : topology::kBands) {
            unknown_by_band_queue_.emplace(topology::queue_name(family, band), &unknown_by_queue_.at(queue));
        }
    }
}

std::vector<double> WorkerMetrics::duration_bounds() {
    return seconds_buckets();
}

WorkerMetrics::QueueTotals WorkerMetrics::totals(const std::string& queue) const {
    QueueTotals totals;
    totals.duration_counts.assign(seconds_buckets().size() + 1, 0.0);
    const auto found = jobs_by_queue_.find(queue);
    if (found == jobs_by_queue_.end()) {
        return totals;
    }
    for (const auto* job : found->second) {
        totals.settled += job->success->Value() + job->retry->Value() + job->dead_letter->Value() +
                          job->duplicate->Value() + job->deduplicated->Value();
        const auto buckets = job->duration->Collect().histogram.bucket;
        for (std::size_t bucket = 0; bucket < buckets.size() && bucket < totals.duration_counts.size(); ++bucket) {
            totals.duration_counts[bucket] += static_cast<double>(buckets[bucket].cumulative_count);
        }
    }
    return totals;
}

WorkerMetrics::Job WorkerMetrics::make_job(const std::string& queue, const std::string& type) {
    const prometheus::Labels labels{{"queue", queue}, {"type", type}};
    auto outcome = [&](const char* name) {
        auto with_outcome = labels;
        with_outcome.emplace("outcome", name);
        return &completed_.Add(with_outcome);
    };
    // Created now so that every series exists (as zero) from the first scrape; rate() needs that.
    return Job{&started_.Add(labels),
               outcome("success"),
               outcome("retry"),
               outcome("dead_letter"),
               outcome("duplicate"),
               outcome("cancelled"),
               outcome("deduplicated"),
               &parked_.Add({{"queue", queue}, {"type", type}, {"reason", "paused"}}),
               &parked_.Add({{"queue", queue}, {"type", type}, {"reason", "shutdown"}}),
               &parked_.Add({{"queue", queue}, {"type", type}, {"reason", "concurrency_limit"}}),
               &parked_.Add({{"queue", queue}, {"type", type}, {"reason", "rate_limit"}}),
               &duration_.Add(labels, seconds_buckets()),
               &queue_wait_.Add(labels, seconds_buckets()),
               &retry_delay_.Add(labels, delay_buckets())};
}

WorkerMetrics::Job& WorkerMetrics::job(const std::string& queue, std::string_view type) {
    if (const auto it = by_type_.find(type); it != by_type_.end()) {
        return it->second;
    }
    return *unknown_by_band_queue_.at(queue);
}

prometheus::Gauge& WorkerMetrics::in_flight(const std::string& queue) {
    return *in_flight_by_queue_.at(queue);
}

prometheus::Gauge& WorkerMetrics::queue_paused(const std::string& queue) {
    return queue_paused_.Add({{"queue", queue}});
}

prometheus::Gauge& WorkerMetrics::types_paused(const std::string& queue) {
    return types_paused_.Add({{"queue", queue}});
}

void WorkerMetrics::BrokerObserver::on_connection_state(bool connected) {
    std::lock_guard lock(metrics_.connections_mutex_);
    metrics_.connections_up_[index_] = connected;
    const bool all_up = metrics_.connections_up_[0] && metrics_.connections_up_[1];
    metrics_.broker_connected_.Set(all_up ? 1 : 0);
}

void WorkerMetrics::BrokerObserver::on_publish_confirmed(std::string_view exchange,
                                                         std::chrono::duration<double> latency) {
    // "" is the default exchange, which RabbitMQ itself calls amq.default.
    const std::string label = exchange.empty() ? "amq.default" : std::string(exchange);
    metrics_.publish_confirm_.Add({{"exchange", label}}, seconds_buckets()).Observe(latency.count());
}

}  // namespace conveyor::worker
