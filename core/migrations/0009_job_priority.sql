-- A job's priority band on the ways in through PostgreSQL (conveyor.enqueue(), the HTTP API, the CLI's scheduled
-- jobs): the relay publishes it as the x-conveyor-priority header, which routes the job to conveyor.<family>.high,
-- conveyor.<family> or conveyor.<family>.low.
ALTER TABLE conveyor.scheduled_jobs ADD COLUMN priority text NOT NULL DEFAULT 'normal'
    CONSTRAINT scheduled_jobs_priority CHECK (priority IN ('high', 'normal', 'low'));

-- A new trailing argument: the old signature goes, so that a call naming its arguments cannot be ambiguous between
-- two versions. The priority is not part of an idempotency key's identity (type and payload are): a client that
-- retries an enqueue with another priority gets the job its first call made.
DROP FUNCTION conveyor.enqueue(text, jsonb, timestamptz, text, text, text, text);
CREATE FUNCTION conveyor.enqueue(type text, payload jsonb, run_at timestamptz DEFAULT now(),
                                 idempotency_key text DEFAULT NULL, correlation_id text DEFAULT NULL,
                                 traceparent text DEFAULT NULL, source text DEFAULT 'sql',
                                 priority text DEFAULT 'normal')
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
    INSERT INTO conveyor.scheduled_jobs AS jobs (id, type, payload, run_at, idempotency_key, correlation_id,
                                                 traceparent, source, priority)
    VALUES (gen_random_uuid(), enqueue.type, enqueue.payload, coalesce(enqueue.run_at, now()),
            enqueue.idempotency_key, enqueue.correlation_id, enqueue.traceparent, enqueue.source,
            coalesce(enqueue.priority, 'normal'))
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
