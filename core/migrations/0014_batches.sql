-- Batches: jobs grouped under one id (the AMQP header x-conveyor-batch), opened, filled and sealed, with a callback
-- job enqueued exactly once when, after the seal, every member has ended.

-- added counts the members added through Conveyor (the CLI, before it publishes them); expected is the number of
-- members in all, said at the seal (a publisher that sent members over AMQP itself says how many); without it the
-- batch is complete when `added` members have ended. counts and callback_job_id (or callback_error, if the callback
-- could not be enqueued) are set as the batch finishes.
CREATE TABLE conveyor.batches (
    id               text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    description      text NOT NULL DEFAULT '',
    callback_type    text,
    callback_payload jsonb NOT NULL DEFAULT '{}',
    opened_at        timestamptz NOT NULL DEFAULT now(),
    opened_by        text NOT NULL,
    added            integer NOT NULL DEFAULT 0 CHECK (added >= 0),
    expected         integer CHECK (expected >= 0),
    sealed_at        timestamptz,
    finished_at      timestamptz,
    counts           jsonb,
    callback_job_id  uuid,
    callback_error   text
);
CREATE INDEX batches_open ON conveyor.batches (opened_at) WHERE finished_at IS NULL;

-- The members that ended, each once (a redelivered or replayed member's later end replaces its earlier one until
-- the batch finishes). A member that has not ended has no row.
CREATE TABLE conveyor.batch_members (
    batch_id text NOT NULL REFERENCES conveyor.batches (id) ON DELETE CASCADE,
    job_id   text NOT NULL,
    state    text NOT NULL CHECK (state IN ('succeeded', 'dead_lettered', 'cancelled', 'deduplicated')),
    ended_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, job_id)
);

-- Finishes each of the sealed batches whose members have all ended: their counts, and the callback job enqueued
-- (through conveyor.enqueue, so the scheduler's relay publishes it) in this transaction. Each batch row is locked
-- (NO KEY UPDATE: it does not wait for the members' foreign-key checks) before its members are counted, so of two
-- transactions recording a batch's last members, the second counts what the first committed: one of them finishes
-- it, once. Returns how many it finished.
CREATE FUNCTION conveyor.finish_batches(p_batch_ids text[]) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    batch record;
    tally jsonb;
    ended integer;
    callback uuid;
    failure text;
    finished integer := 0;
BEGIN
    FOR batch IN
        SELECT b.* FROM conveyor.batches b
         WHERE b.id = ANY (p_batch_ids) AND b.sealed_at IS NOT NULL AND b.finished_at IS NULL
         ORDER BY b.id FOR NO KEY UPDATE
    LOOP
        SELECT count(*), jsonb_build_object(
                   'succeeded', count(*) FILTER (WHERE m.state = 'succeeded'),
                   'dead_lettered', count(*) FILTER (WHERE m.state = 'dead_lettered'),
                   'cancelled', count(*) FILTER (WHERE m.state = 'cancelled'),
                   'deduplicated', count(*) FILTER (WHERE m.state = 'deduplicated'),
                   'total', count(*))
          INTO ended, tally
          FROM conveyor.batch_members m WHERE m.batch_id = batch.id;
        CONTINUE WHEN ended < coalesce(batch.expected, batch.added);
        callback := NULL;
        failure := NULL;
        IF batch.callback_type IS NOT NULL THEN
            -- A callback that cannot be enqueued must not fail the workers recording the members: the batch
            -- finishes, and says why there was no callback.
            BEGIN
                callback := conveyor.enqueue(batch.callback_type,
                                             batch.callback_payload || jsonb_build_object(
                                                 'batch', jsonb_build_object('id', batch.id) || tally),
                                             idempotency_key => 'batch:' || batch.id,
                                             correlation_id => batch.id, source => 'batch:' || batch.id);
            EXCEPTION WHEN OTHERS THEN
                failure := SQLERRM;
            END;
        END IF;
        UPDATE conveyor.batches SET finished_at = now(), counts = tally, callback_job_id = callback,
                                    callback_error = failure
         WHERE id = batch.id;
        finished := finished + 1;
    END LOOP;
    RETURN finished;
END $$;

-- Records how members ended (members of a batch that does not exist are ignored: a publisher's typo must not stop
-- the workers), then finishes the batches that are complete. Returns how many it finished.
CREATE FUNCTION conveyor.record_batch_members(p_batch_ids text[], p_job_ids text[], p_states text[])
    RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO conveyor.batch_members AS m (batch_id, job_id, state)
    SELECT DISTINCT ON (r.batch_id, r.job_id) r.batch_id, r.job_id, r.state
      FROM unnest(p_batch_ids, p_job_ids, p_states) WITH ORDINALITY AS r(batch_id, job_id, state, arrival)
      JOIN conveyor.batches b ON b.id = r.batch_id AND b.finished_at IS NULL
     ORDER BY r.batch_id, r.job_id, r.arrival DESC
    ON CONFLICT (batch_id, job_id) DO UPDATE SET state = excluded.state, ended_at = excluded.ended_at;
    RETURN conveyor.finish_batches(p_batch_ids);
END $$;

-- Seals a batch: no member is added after it, and p_expected (if given) is how many it has in all. Finishes it at
-- once if its members have all ended. Raises if the batch does not exist or is sealed already.
CREATE FUNCTION conveyor.seal_batch(p_batch_id text, p_expected integer) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conveyor.batches SET sealed_at = now(), expected = p_expected
     WHERE id = p_batch_id AND sealed_at IS NULL;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM conveyor.batches WHERE id = p_batch_id) THEN
            RAISE EXCEPTION 'batch % is sealed already', p_batch_id USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        RAISE EXCEPTION 'no batch %', p_batch_id USING ERRCODE = 'no_data_found';
    END IF;
    IF p_expected IS NOT NULL AND p_expected < (SELECT added FROM conveyor.batches WHERE id = p_batch_id) THEN
        RAISE EXCEPTION 'batch % has % members added already; it cannot expect %', p_batch_id,
            (SELECT added FROM conveyor.batches WHERE id = p_batch_id), p_expected
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM conveyor.finish_batches(ARRAY[p_batch_id]);
END $$;
