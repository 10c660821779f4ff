-- Job history: what happened to every job a worker took, for `conveyor jobs show|list` and GET /v1/jobs. Append-only
-- events written by the workers in batches, off the jobs' path: an attempt's start ('running', while it runs
-- longer than a flush), progress, and its end ('succeeded', 'retrying', 'dead_lettered', 'cancelled', or
-- 'duplicate' for an attempt whose effects were already applied). A job's state is its latest event's.
-- Partitioned by day of recorded_at (UTC): retention drops whole partitions, never DELETEs rows.
CREATE TABLE conveyor.job_events (
    job_id         text NOT NULL,
    attempt        integer NOT NULL,
    state          text NOT NULL,
    type           text NOT NULL,
    queue          text NOT NULL,
    worker         text NOT NULL,
    correlation_id text,
    trace_id       text,
    enqueued_at    timestamptz,
    started_at     timestamptz,
    ended_at       timestamptz,
    error          text,
    progress       real,
    progress_note  text,
    recorded_at    timestamptz NOT NULL,
    -- When the batch reached the database: written_at - recorded_at is the history's lag.
    written_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT job_events_state CHECK (state IN ('running', 'succeeded', 'retrying', 'dead_lettered', 'cancelled',
                                                 'duplicate', 'deduplicated')),
    CONSTRAINT job_events_progress CHECK (progress BETWEEN 0 AND 1)
) PARTITION BY RANGE (recorded_at);
-- Two indexes only: every row is written at full job speed. Listings by time scan the day partitions they need.
CREATE INDEX job_events_job ON conveyor.job_events (job_id, recorded_at);
CREATE INDEX job_events_correlation ON conveyor.job_events (correlation_id) WHERE correlation_id IS NOT NULL;

-- Creates the day partitions from yesterday to the day after tomorrow (UTC) and drops every partition whose day
-- ended more than `retention` ago; returns how many it dropped. Rows live between retention and retention plus a
-- day. Workers call it as housekeeping, and when a write finds no partition for its rows.
CREATE FUNCTION conveyor.maintain_job_history(retention interval) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    day date;
    old record;
    dropped integer := 0;
BEGIN
    -- Two workers at once would race on the catalogue.
    PERFORM pg_advisory_xact_lock(hashtext('conveyor.job_events partitions'));
    FOR offset_days IN -1..2 LOOP
        day := today + offset_days;
        CONTINUE WHEN (day + 1)::timestamp AT TIME ZONE 'UTC' <= now() - retention;
        EXECUTE format('CREATE TABLE IF NOT EXISTS conveyor.%I PARTITION OF conveyor.job_events '
                       'FOR VALUES FROM (%L) TO (%L)',
                       'job_events_' || to_char(day, 'YYYYMMDD'),
                       day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
    FOR old IN
        SELECT child.relname
        FROM pg_inherits
        JOIN pg_class child ON child.oid = pg_inherits.inhrelid
        WHERE pg_inherits.inhparent = 'conveyor.job_events'::regclass
          AND child.relname ~ '^job_events_[0-9]{8}$'
          AND (to_date(substring(child.relname FROM 12), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC'
              <= now() - retention
    LOOP
        EXECUTE format('DROP TABLE conveyor.%I', old.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;

SELECT conveyor.maintain_job_history(interval '7 days');
