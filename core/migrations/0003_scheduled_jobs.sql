-- Jobs enqueued through PostgreSQL: delayed jobs (run_at in the future), jobs another system enqueues inside its
-- own transaction (conveyor.enqueue), jobs taken by the HTTP API and the fires of cron schedules. The scheduler's
-- relay publishes a row once it is due and its transaction has committed, then marks it published. Published and
-- cancelled rows stay for the retention period: an idempotency key is honoured for as long as its row exists.
CREATE TABLE conveyor.scheduled_jobs (
    id              uuid PRIMARY KEY,
    type            text NOT NULL,
    payload         jsonb NOT NULL,
    run_at          timestamptz NOT NULL,
    idempotency_key text UNIQUE,
    correlation_id  text,
    traceparent     text,
    -- Who enqueued it: sql, api:<token name>, cli, schedule:<name>.
    source          text NOT NULL,
    state           text NOT NULL DEFAULT 'pending',
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz,
    -- Failed publish attempts (the broker nacked the job or the connection dropped mid-publish) and when the next
    -- may be made: a job that keeps failing backs off instead of holding up the jobs due after it.
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    -- Why the last publish failed, or why the row could not be published at all (state failed).
    error           text,
    CONSTRAINT scheduled_jobs_type CHECK (length(type) <= 255 AND type ~ '^[a-z0-9_-]+(\.[a-z0-9_-]+)+$'),
    CONSTRAINT scheduled_jobs_payload CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT scheduled_jobs_run_at CHECK (isfinite(run_at)),
    CONSTRAINT scheduled_jobs_state CHECK (state IN ('pending', 'published', 'cancelled', 'failed')),
    CONSTRAINT scheduled_jobs_idempotency_key CHECK (length(idempotency_key) BETWEEN 1 AND 255)
);
-- The relay's work list: only pending rows, in due order.
CREATE INDEX scheduled_jobs_due ON conveyor.scheduled_jobs (run_at) WHERE state = 'pending';
-- Retention: finished rows by age.
CREATE INDEX scheduled_jobs_finished ON conveyor.scheduled_jobs (finished_at) WHERE state <> 'pending';

-- One NOTIFY per inserting statement, not per row: a batch of 1,000 jobs wakes the relays once. PostgreSQL sends
-- it at commit, so a relay never wakes for rows it cannot see yet, and never for a rolled-back insert.
CREATE FUNCTION conveyor.notify_scheduled_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('conveyor_scheduled_jobs', '');
    RETURN NULL;
END $$;
CREATE TRIGGER scheduled_jobs_notify AFTER INSERT ON conveyor.scheduled_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION conveyor.notify_scheduled_jobs();

-- Transactional enqueue for other systems: call it inside your own transaction, and the job is published if and
-- only if that transaction commits (at its run_at, within about a second). The same idempotency key returns the
-- same job id for as long as the job's row is retained.
CREATE FUNCTION conveyor.enqueue(type text, payload jsonb, run_at timestamptz DEFAULT now(),
                                 idempotency_key text DEFAULT NULL, correlation_id text DEFAULT NULL,
                                 traceparent text DEFAULT NULL, source text DEFAULT 'sql')
    RETURNS uuid LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    job_id uuid;
BEGIN
    INSERT INTO conveyor.scheduled_jobs AS jobs (id, type, payload, run_at, idempotency_key, correlation_id,
                                                 traceparent, source)
    VALUES (gen_random_uuid(), enqueue.type, enqueue.payload, coalesce(enqueue.run_at, now()),
            enqueue.idempotency_key, enqueue.correlation_id, enqueue.traceparent, enqueue.source)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING jobs.id INTO job_id;
    IF job_id IS NULL THEN
        -- The key's row exists (a replay), or a concurrent transaction holding the same key has just committed.
        SELECT jobs.id INTO job_id FROM conveyor.scheduled_jobs AS jobs
        WHERE jobs.idempotency_key = enqueue.idempotency_key;
        IF job_id IS NULL THEN
            RAISE EXCEPTION 'idempotency key % is being used by a concurrent transaction', enqueue.idempotency_key
                USING ERRCODE = '40001', HINT = 'Retry the transaction.';
        END IF;
    END IF;
    RETURN job_id;
END $$;

-- The state of each cron schedule, shared by every scheduler replica. The replica that fires a schedule locks its
-- row, enqueues each due fire time with the idempotency key schedule:<name>:<fire time>, and advances
-- last_fire_at in the same transaction: a fire time is enqueued exactly once however many replicas try.
CREATE TABLE conveyor.schedules (
    name         text PRIMARY KEY,
    cron         text NOT NULL,
    timezone     text NOT NULL,
    type         text NOT NULL,
    payload      jsonb NOT NULL,
    misfire      text NOT NULL,
    -- The last fire time handled (enqueued or skipped as a misfire); firing resumes after it.
    last_fire_at timestamptz NOT NULL,
    next_fire_at timestamptz,
    fired        bigint NOT NULL DEFAULT 0,
    misfired     bigint NOT NULL DEFAULT 0,
    -- In the leading replica's schedules file. A schedule missing from it is kept, inactive, with its
    -- last_fire_at, so a replica with an older file leading for a while (a rolling update) loses nothing: once
    -- active again, the fire times it missed meanwhile go through its misfire policy.
    active       boolean NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_misfire CHECK (misfire IN ('catch_up', 'skip'))
);
