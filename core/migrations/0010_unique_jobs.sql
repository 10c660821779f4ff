-- Unique jobs: one job per (job type, unique key) while it is queued or running, and for its window (seconds) after
-- it reached a terminal state. Workers claim the key when they admit a job that carries one
-- (x-conveyor-unique-key); another job with a held key is discarded as deduplicated, never run. The row belongs to
-- the job that claimed it (job_id): its retries and redeliveries claim it again, its end starts the window
-- (held_until), a cancel deletes it. Keys are one namespace per job type, shared by every way in.
CREATE TABLE conveyor.unique_keys (
    job_type   text NOT NULL,
    unique_key text NOT NULL,
    job_id     text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    -- NULL while the job is queued or running; then when the key is free again.
    held_until timestamptz,
    PRIMARY KEY (job_type, unique_key),
    CONSTRAINT unique_keys_key CHECK (length(unique_key) BETWEEN 1 AND 255)
);
CREATE INDEX unique_keys_job_id ON conveyor.unique_keys (job_id);
CREATE INDEX unique_keys_expired ON conveyor.unique_keys (held_until) WHERE held_until IS NOT NULL;

-- The ways in through PostgreSQL carry the key to the relay, which publishes it as the headers.
ALTER TABLE conveyor.scheduled_jobs
    ADD COLUMN unique_key text CONSTRAINT scheduled_jobs_unique_key CHECK (length(unique_key) BETWEEN 1 AND 255),
    ADD COLUMN unique_for integer NOT NULL DEFAULT 0
        CONSTRAINT scheduled_jobs_unique_for CHECK (unique_for BETWEEN 0 AND 315360000);

DROP FUNCTION conveyor.enqueue(text, jsonb, timestamptz, text, text, text, text, text);
CREATE FUNCTION conveyor.enqueue(type text, payload jsonb, run_at timestamptz DEFAULT now(),
                                 idempotency_key text DEFAULT NULL, correlation_id text DEFAULT NULL,
                                 traceparent text DEFAULT NULL, source text DEFAULT 'sql',
                                 priority text DEFAULT 'normal', unique_key text DEFAULT NULL,
                                 unique_for integer DEFAULT 0)
    RETURNS uuid LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    job_id uuid;
    existing record;
BEGIN
    IF enqueue.run_at > now() + interval '3650 days' THEN
        RAISE EXCEPTION 'run_at % is more than 10 years ahead', enqueue.run_at USING ERRCODE = 'datetime_field_overflow';
    END IF;
    IF NOT conveyor.jsonb_within_depth(enqueue.payload) THEN
        RAISE EXCEPTION 'the payload nests deeper than 32 levels of objects and arrays'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(enqueue.priority, 'normal') NOT IN ('high', 'normal', 'low') THEN
        RAISE EXCEPTION 'priority % is not high, normal or low', quote_literal(enqueue.priority)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF enqueue.unique_key IS NOT NULL AND length(enqueue.unique_key) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'unique_key must be 1 to 255 characters' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(enqueue.unique_for, 0) NOT BETWEEN 0 AND 315360000 THEN
        RAISE EXCEPTION 'unique_for % is not a number of seconds from 0 to 315360000 (10 years)', enqueue.unique_for
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(enqueue.unique_for, 0) > 0 AND enqueue.unique_key IS NULL THEN
        RAISE EXCEPTION 'unique_for needs a unique_key' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO conveyor.scheduled_jobs AS jobs (id, type, payload, run_at, idempotency_key, correlation_id,
                                                 traceparent, source, priority, unique_key, unique_for)
    VALUES (gen_random_uuid(), enqueue.type, enqueue.payload, coalesce(enqueue.run_at, now()),
            enqueue.idempotency_key, enqueue.correlation_id, enqueue.traceparent, enqueue.source,
            coalesce(enqueue.priority, 'normal'), enqueue.unique_key, coalesce(enqueue.unique_for, 0))
    ON CONFLICT (source, idempotency_key) DO NOTHING
    RETURNING jobs.id INTO job_id;
    IF job_id IS NOT NULL THEN
        RETURN job_id;
    END IF;
    -- The key's row exists (a replay), or a concurrent transaction holding the same key has just committed.
    SELECT jobs.id, jobs.type, jobs.payload INTO existing FROM conveyor.scheduled_jobs AS jobs
    WHERE jobs.source = enqueue.source AND jobs.idempotency_key = enqueue.idempotency_key;
    IF existing.id IS NULL THEN
        RAISE EXCEPTION 'idempotency key % is being used by a concurrent transaction', enqueue.idempotency_key
            USING ERRCODE = '40001', HINT = 'Retry the transaction.';
    END IF;
    IF existing.type <> enqueue.type OR existing.payload <> enqueue.payload THEN
        RAISE EXCEPTION 'idempotency key % of % already names job %, of another type or payload',
            quote_literal(enqueue.idempotency_key), enqueue.source, existing.id
            USING ERRCODE = 'unique_violation', HINT = 'A new job needs a new key.';
    END IF;
    RETURN existing.id;
END $$;
