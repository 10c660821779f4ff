-- The console's overview reads the last hour of the job history every few seconds; without an index it would
-- scan the whole of today's partition each time.
CREATE INDEX job_events_recorded_at ON conveyor.job_events (recorded_at);

-- A pending scheduled job made due now (`conveyor scheduled run`, POST /v1/scheduled/{id}/run, the console) is an
-- operator's change like the others.
ALTER TABLE conveyor.audit_log DROP CONSTRAINT audit_log_action_check;
ALTER TABLE conveyor.audit_log ADD CONSTRAINT audit_log_action_check
    CHECK (action IN ('cancel', 'pause', 'resume', 'replay', 'purge', 'apply_flow_limits', 'run_now'));
