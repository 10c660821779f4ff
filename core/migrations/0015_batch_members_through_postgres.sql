-- Batch members through PostgreSQL: conveyor.enqueue(…, batch => 'id') (and so POST /v1/jobs and conveyor enqueue
-- --at/--in) adds the job to an open batch in the caller's transaction, and the relay publishes it with
-- x-conveyor-batch. A member counts as added when its row commits; a replay of an idempotency key adds nothing.
-- No foreign key: the column is the label the relay copies into the header, as AMQP publishers set it.
ALTER TABLE conveyor.scheduled_jobs
    ADD COLUMN batch_id text CONSTRAINT scheduled_jobs_batch_id CHECK (length(batch_id) BETWEEN 1 AND 128);

-- What conveyor.enqueue() refuses before it stores anything, each with the argument's name.
CREATE FUNCTION conveyor.check_enqueue_arguments(p_run_at timestamptz, p_payload jsonb, p_priority text,
                                                 p_unique_key text, p_unique_for integer)
    RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_run_at > now() + interval '3650 days' THEN
        RAISE EXCEPTION 'run_at % is more than 10 years ahead', p_run_at USING ERRCODE = 'datetime_field_overflow';
    END IF;
    IF NOT conveyor.jsonb_within_depth(p_payload) THEN
        RAISE EXCEPTION 'the payload nests deeper than 32 levels of objects and arrays'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(p_priority, 'normal') NOT IN ('high', 'normal', 'low') THEN
        RAISE EXCEPTION 'priority % is not high, normal or low', quote_literal(p_priority)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_unique_key IS NOT NULL AND length(p_unique_key) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'unique_key must be 1 to 255 characters' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(p_unique_for, 0) NOT BETWEEN 0 AND 315360000 THEN
        RAISE EXCEPTION 'unique_for % is not a number of seconds from 0 to 315360000 (10 years)', p_unique_for
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(p_unique_for, 0) > 0 AND p_unique_key IS NULL THEN
        RAISE EXCEPTION 'unique_for needs a unique_key' USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

-- Counts one more member of an open batch. The row lock it takes orders it with conveyor.seal_batch(): a member
-- either joins before the seal or is refused.
CREATE FUNCTION conveyor.join_batch(p_batch_id text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conveyor.batches SET added = added + 1 WHERE id = p_batch_id AND sealed_at IS NULL;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM conveyor.batches WHERE id = p_batch_id) THEN
            RAISE EXCEPTION 'batch % is sealed: it takes no more members', p_batch_id
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        RAISE EXCEPTION 'no batch %', p_batch_id USING ERRCODE = 'no_data_found',
            HINT = 'Open it first: conveyor batches open, or POST /v1/batches.';
    END IF;
END $$;

DROP FUNCTION conveyor.enqueue(text, jsonb, timestamptz, text, text, text, text, text, text, integer);
CREATE FUNCTION conveyor.enqueue(type text, payload jsonb, run_at timestamptz DEFAULT now(),
                                 idempotency_key text DEFAULT NULL, correlation_id text DEFAULT NULL,
                                 traceparent text DEFAULT NULL, source text DEFAULT 'sql',
                                 priority text DEFAULT 'normal', unique_key text DEFAULT NULL,
                                 unique_for integer DEFAULT 0, batch text DEFAULT NULL)
    RETURNS uuid LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    job_id uuid;
    existing record;
BEGIN
    PERFORM conveyor.check_enqueue_arguments(enqueue.run_at, enqueue.payload, enqueue.priority, enqueue.unique_key,
                                             enqueue.unique_for);
    INSERT INTO conveyor.scheduled_jobs AS jobs (id, type, payload, run_at, idempotency_key, correlation_id,
                                                 traceparent, source, priority, unique_key, unique_for, batch_id)
    VALUES (gen_random_uuid(), enqueue.type, enqueue.payload, coalesce(enqueue.run_at, now()),
            enqueue.idempotency_key, enqueue.correlation_id, enqueue.traceparent, enqueue.source,
            coalesce(enqueue.priority, 'normal'), enqueue.unique_key, coalesce(enqueue.unique_for, 0), enqueue.batch)
    ON CONFLICT (source, idempotency_key) DO NOTHING
    RETURNING jobs.id INTO job_id;
    IF job_id IS NOT NULL THEN
        IF enqueue.batch IS NOT NULL THEN
            PERFORM conveyor.join_batch(enqueue.batch);
        END IF;
        RETURN job_id;
    END IF;
    -- The key's row exists (a replay), or a concurrent transaction holding the same key has just committed.
    SELECT jobs.id, jobs.type, jobs.payload, jobs.batch_id INTO existing FROM conveyor.scheduled_jobs AS jobs
    WHERE jobs.source = enqueue.source AND jobs.idempotency_key = enqueue.idempotency_key;
    IF existing.id IS NULL THEN
        RAISE EXCEPTION 'idempotency key % is being used by a concurrent transaction', enqueue.idempotency_key
            USING ERRCODE = '40001', HINT = 'Retry the transaction.';
    END IF;
    IF existing.type <> enqueue.type OR existing.payload <> enqueue.payload
       OR existing.batch_id IS DISTINCT FROM enqueue.batch THEN
        RAISE EXCEPTION 'idempotency key % of % already names job %, of another type, payload or batch',
            quote_literal(enqueue.idempotency_key), enqueue.source, existing.id
            USING ERRCODE = 'unique_violation', HINT = 'A new job needs a new key.';
    END IF;
    RETURN existing.id;
END $$;

-- A member that ends before it is ever published (cancelled while pending, or failed by the relay) never reaches a
-- worker: its end is recorded here, in the transaction that ends it, or its batch would wait for it forever.
CREATE FUNCTION conveyor.record_unpublished_batch_member() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM conveyor.record_batch_members(ARRAY[NEW.batch_id], ARRAY[NEW.id::text],
                                          ARRAY[CASE NEW.state WHEN 'cancelled' THEN 'cancelled'
                                                ELSE 'dead_lettered' END]);
    RETURN NULL;
END $$;
CREATE TRIGGER scheduled_jobs_unpublished_batch_member AFTER UPDATE OF state ON conveyor.scheduled_jobs
    FOR EACH ROW WHEN (NEW.batch_id IS NOT NULL AND OLD.state = 'pending' AND NEW.state IN ('cancelled', 'failed'))
    EXECUTE FUNCTION conveyor.record_unpublished_batch_member();
