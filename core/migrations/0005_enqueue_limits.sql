-- What the enqueue door refuses, so that no way in can claim another's key or store what a reader later breaks on.

-- Idempotency keys are namespaced by their source (api:<token name>, schedule:<name>, cli, and for SQL callers the
-- source they name, 'sql' by default): an API token can no longer pre-claim schedule:<name>:<time>, the key of a
-- future cron fire, and run its own job in the schedule's place.
ALTER TABLE conveyor.scheduled_jobs DROP CONSTRAINT scheduled_jobs_idempotency_key_key;
ALTER TABLE conveyor.scheduled_jobs ADD CONSTRAINT scheduled_jobs_source_idempotency_key
    UNIQUE (source, idempotency_key);

-- A payload nests at most 32 levels of objects and arrays, the payload itself being level 1 (json::kMaxDepth in
-- core/include/conveyor/core/json.hpp; the HTTP API, the CLI and the worker enforce the same). A container at path
-- level 32 (the root is level 0) is a 33rd level.
CREATE FUNCTION conveyor.jsonb_within_depth(document jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT NOT jsonb_path_exists(document, 'strict $.**{32} ? (@.type() == "object" || @.type() == "array")')
$$;
-- NOT VALID: rows written before the limit stay readable (the API renders those as text); new rows are checked.
ALTER TABLE conveyor.scheduled_jobs ADD CONSTRAINT scheduled_jobs_payload_depth
    CHECK (conveyor.jsonb_within_depth(payload)) NOT VALID;

-- The same key again returns the same job only for the same job: a key that names a job of another type or payload
-- is refused (unique_violation), never answered with the other job's id. run_at is bounded like the API's delay.
CREATE OR REPLACE FUNCTION conveyor.enqueue(type text, payload jsonb, run_at timestamptz DEFAULT now(),
                                            idempotency_key text DEFAULT NULL, correlation_id text DEFAULT NULL,
                                            traceparent text DEFAULT NULL, source text DEFAULT 'sql')
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
    INSERT INTO conveyor.scheduled_jobs AS jobs (id, type, payload, run_at, idempotency_key, correlation_id,
                                                 traceparent, source)
    VALUES (gen_random_uuid(), enqueue.type, enqueue.payload, coalesce(enqueue.run_at, now()),
            enqueue.idempotency_key, enqueue.correlation_id, enqueue.traceparent, enqueue.source)
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
