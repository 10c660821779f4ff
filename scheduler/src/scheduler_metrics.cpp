#include "scheduler_metrics.hpp"

namespace conveyor::scheduler {

namespace {

prometheus::Histogram::BucketBoundaries latency_buckets() {
    return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

}  // namespace

SchedulerMetrics::SchedulerMetrics(prometheus::Registry& registry)
    : leader(prometheus::BuildGauge()
                 .Name("conveyor_scheduler_leader")
                 .Help("1 on the replica that fires the cron schedules")
                 .Register(registry)
                 .Add({})),
      relay_published(prometheus::BuildCounter()
                          .Name("conveyor_relay_published_total")
                          .Help("Scheduled jobs the relay published (confirmed by the broker)")
                          .Register(registry)
                          .Add({})),
      relay_unroutable(prometheus::BuildCounter()
                           .Name("conveyor_relay_unroutable_total")
                           .Help("Scheduled jobs no queue is bound for, marked failed")
                           .Register(registry)
                           .Add({})),
      relay_latency(prometheus::BuildHistogram()
                        .Name("conveyor_relay_latency_seconds")
                        .Help("From when a scheduled job was due (or inserted, if later) to the broker's confirm")
                        .Register(registry)
                        .Add({}, latency_buckets())),
      pending(prometheus::BuildGauge()
                  .Name("conveyor_scheduled_jobs_pending")
                  .Help("Rows of conveyor.scheduled_jobs waiting to be published, due or not")
                  .Register(registry)
                  .Add({})),
      overdue(prometheus::BuildGauge()
                  .Name("conveyor_scheduled_jobs_overdue")
                  .Help("Pending rows due more than a second ago: a relay that is behind or down")
                  .Register(registry)
                  .Add({})),
      batch_members_unended(prometheus::BuildGauge()
                                .Name("conveyor_batch_members_unended")
                                .Help("Members of unfinished batches that have not ended yet (expected or added, "
                                      "less those that ended)")
                                .Register(registry)
                                .Add({})),
      oldest_unfinished_batch(prometheus::BuildGauge()
                                  .Name("conveyor_batch_oldest_unfinished_age_seconds")
                                  .Help("Age of the oldest batch not finished yet (0 when there is none)")
                                  .Register(registry)
                                  .Add({})),
      fired_(prometheus::BuildCounter()
                 .Name("conveyor_schedule_fired_total")
                 .Help("Fire times of a cron schedule enqueued by this replica")
                 .Register(registry)),
      misfired_(prometheus::BuildCounter()
                    .Name("conveyor_schedule_misfired_total")
                    .Help("Fire times missed by more than the schedule's grace and not caught up")
                    .Register(registry)),
      dlq_replayed_(prometheus::BuildCounter()
                        .Name("conveyor_dlq_replayed_total")
                        .Help("Dead letters replayed from each dead-letter queue, by anyone (cluster-wide, from "
                              "conveyor.dead_letter_replays)")
                        .Register(registry)),
      dead_letters_(prometheus::BuildGauge()
                        .Name("conveyor_dead_letters_stored")
                        .Help("Dead letters in conveyor.dead_letters waiting for an operator, by family and reason")
                        .Register(registry)),
      oldest_dead_letter_(prometheus::BuildGauge()
                              .Name("conveyor_dead_letter_oldest_age_seconds")
                              .Help("Age of the oldest stored dead letter of a family (0 when there is none)")
                              .Register(registry)),
      next_fire_(prometheus::BuildGauge()
                     .Name("conveyor_schedule_next_fire_timestamp_seconds")
                     .Help("When an active cron schedule fires next (Unix time; 0 once it is inactive): a time "
                           "long past means nobody fires it")
                     .Register(registry)),
      unfinished_batches_(prometheus::BuildGauge()
                              .Name("conveyor_batches_unfinished")
                              .Help("Batches not finished yet, by state: open (taking members) or sealed (waiting "
                                    "for their members to end)")
                              .Register(registry)),
      broker_connected_(prometheus::BuildGauge()
                            .Name("conveyor_broker_connected")
                            .Help("1 while the scheduler's broker connection is up")
                            .Register(registry)
                            .Add({})),
      publish_confirm_(prometheus::BuildHistogram()
                           .Name("conveyor_publish_confirm_seconds")
                           .Help("Time from basic.publish to the broker's confirm")
                           .Register(registry)) {}

void SchedulerMetrics::on_connection_state(bool connected) {
    broker_connected_.Set(connected ? 1 : 0);
}

void SchedulerMetrics::on_publish_confirmed(std::string_view exchange, std::chrono::duration<double> latency) {
    publish_confirm_.Add({{"exchange", std::string(exchange)}}, latency_buckets()).Observe(latency.count());
}

}  // namespace conveyor::scheduler
