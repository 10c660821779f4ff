-- Per-key concurrency limits, as workers keep the places they hold and take promoted jobs straight from the lines.
--
-- Taking places says, for each request (by its position in the batch, as one job id may come twice), why it got
-- none: a key that is only full lets the job wait on its worker for a place another of that worker's jobs frees; a
-- key with a line (or a job whose copy holds a place on another worker) sends it to the line. The functions of 0011
-- stay for the workers of the previous release during a rolling upgrade (one of those may publish a job a new worker
-- took from a line, so it may run twice then: never lost).
CREATE FUNCTION conveyor.take_concurrency_places(p_types text[], p_keys text[], p_job_ids text[], p_limits integer[],
                                                 p_holder text, p_lease interval)
    RETURNS TABLE (arrival bigint, verdict text) LANGUAGE plpgsql AS $$
DECLARE
    request record;
    held record;
    live integer;
BEGIN
    FOR request IN
        SELECT r.job_type, r.concurrency_key, r.job_id, r.job_limit, r.arrival
          FROM unnest(p_types, p_keys, p_job_ids, p_limits) WITH ORDINALITY
               AS r(job_type, concurrency_key, job_id, job_limit, arrival)
         ORDER BY conveyor.concurrency_key_lock(r.job_type, r.concurrency_key), r.arrival
    LOOP
        arrival := request.arrival;
        PERFORM pg_advisory_xact_lock(1668247139,
                                      conveyor.concurrency_key_lock(request.job_type, request.concurrency_key));
        SELECT s.holder, s.expires_at INTO held FROM conveyor.concurrency_slots s
         WHERE s.job_type = request.job_type AND s.concurrency_key = request.concurrency_key
           AND s.job_id = request.job_id;
        IF FOUND THEN
            IF held.holder IS NULL OR held.expires_at <= now() THEN
                UPDATE conveyor.concurrency_slots s SET holder = p_holder, expires_at = now() + p_lease
                 WHERE s.job_type = request.job_type AND s.concurrency_key = request.concurrency_key
                   AND s.job_id = request.job_id;
                verdict := 'granted';
            ELSIF held.holder = p_holder THEN
                -- This worker runs a copy of the job, or reuses the place for another: it waits here for one.
                verdict := 'full';
            ELSE
                verdict := 'line';
            END IF;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF EXISTS (SELECT 1 FROM conveyor.concurrency_waiting w
                    WHERE w.job_type = request.job_type AND w.concurrency_key = request.concurrency_key
                      AND w.released_at IS NULL) THEN
            verdict := 'line';
            RETURN NEXT;
            CONTINUE;
        END IF;
        SELECT count(*) INTO live FROM conveyor.concurrency_slots s
         WHERE s.job_type = request.job_type AND s.concurrency_key = request.concurrency_key AND s.expires_at > now();
        IF live < request.job_limit THEN
            INSERT INTO conveyor.concurrency_slots (job_type, concurrency_key, job_id, holder, expires_at)
            VALUES (request.job_type, request.concurrency_key, request.job_id, p_holder, now() + p_lease);
            verdict := 'granted';
        ELSE
            verdict := 'full';
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;

-- A job promoted from its key's line by the worker that freed the place is taken by that worker straight from here
-- (claimed_by), rather than published again to its queue, where it would wait behind the queue's whole backlog while
-- its place stayed idle. The row stays until the job is settled (then deleted), or goes back to the line if the
-- worker hands it back or dies: claim_expires_at is its lease, renewed while the worker lives, like a place's.
-- claims counts the takings, so a job taken again after its worker died is known as a redelivery.
ALTER TABLE conveyor.concurrency_waiting
    ADD COLUMN claimed_by text,
    ADD COLUMN claim_expires_at timestamptz,
    ADD COLUMN claims integer NOT NULL DEFAULT 0;
CREATE INDEX concurrency_waiting_claims ON conveyor.concurrency_waiting (claim_expires_at)
    WHERE claimed_by IS NOT NULL;

-- Gives what each key of a batch has free (its keys locked already) to its oldest waiting jobs. With p_claim, each is
-- claimed for p_holder, to run straight from here, and holds its place as p_holder's from now on (leased); without
-- (a worker that is leaving), each is promised its place as promote_waiting does, to be published again by whichever
-- worker publishes next. Returns the jobs it promoted, with their messages.
CREATE FUNCTION conveyor.claim_concurrency_places(p_types text[], p_keys text[], p_limits integer[], p_holder text,
                                                  p_claim boolean, p_promise interval, p_lease interval)
    RETURNS TABLE (line_id bigint, job_type text, concurrency_key text, job_id text, properties text, body bytea,
                   claims integer)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    line record;
    free integer;
BEGIN
    FOR line IN
        SELECT r.job_type, r.concurrency_key, max(r.job_limit) AS job_limit
          FROM unnest(p_types, p_keys, p_limits) AS r(job_type, concurrency_key, job_limit)
         GROUP BY r.job_type, r.concurrency_key
    LOOP
        SELECT line.job_limit - count(*) INTO free FROM conveyor.concurrency_slots s
         WHERE s.job_type = line.job_type AND s.concurrency_key = line.concurrency_key AND s.expires_at > now();
        CONTINUE WHEN free <= 0;
        RETURN QUERY
        WITH chosen AS (
            SELECT w.id FROM conveyor.concurrency_waiting w
             WHERE w.job_type = line.job_type AND w.concurrency_key = line.concurrency_key
               AND w.released_at IS NULL
             ORDER BY w.id LIMIT free
        ), claimed AS (
            UPDATE conveyor.concurrency_waiting w
               SET released_at = now(),
                   claimed_by = CASE WHEN p_claim THEN p_holder END,
                   claim_expires_at = CASE WHEN p_claim THEN now() + p_lease END,
                   claims = w.claims + CASE WHEN p_claim THEN 1 ELSE 0 END
              FROM chosen WHERE w.id = chosen.id
            RETURNING w.id, w.job_type, w.concurrency_key, w.job_id, w.properties, w.body, w.claims
        ), placed AS (
            INSERT INTO conveyor.concurrency_slots AS s (job_type, concurrency_key, job_id, holder, expires_at)
            SELECT c.job_type, c.concurrency_key, c.job_id, CASE WHEN p_claim THEN p_holder END,
                   now() + CASE WHEN p_claim THEN p_lease ELSE p_promise END
              FROM claimed c
            ON CONFLICT ON CONSTRAINT concurrency_slots_pkey
            DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
        )
        SELECT c.id, c.job_type, c.concurrency_key, c.job_id, c.properties::text, c.body, c.claims
          FROM claimed c ORDER BY c.id;
    END LOOP;
END $$;

-- Frees the places of jobs that ended, and gives them to the oldest waiting jobs as claim_concurrency_places does.
CREATE FUNCTION conveyor.hand_over_concurrency_places(p_types text[], p_keys text[], p_job_ids text[],
                                                      p_limits integer[], p_holder text, p_claim boolean,
                                                      p_promise interval, p_lease interval)
    RETURNS TABLE (line_id bigint, job_type text, concurrency_key text, job_id text, properties text, body bytea,
                   claims integer)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM conveyor.lock_concurrency_keys(p_types, p_keys);
    DELETE FROM conveyor.concurrency_slots s
     USING unnest(p_types, p_keys, p_job_ids) AS r(job_type, concurrency_key, job_id)
     WHERE s.job_type = r.job_type AND s.concurrency_key = r.concurrency_key AND s.job_id = r.job_id
       AND (s.holder = p_holder OR s.holder IS NULL);
    RETURN QUERY SELECT * FROM conveyor.claim_concurrency_places(p_types, p_keys, p_limits, p_holder, p_claim,
                                                                 p_promise, p_lease);
END $$;

-- Puts jobs that got no place in their key's line (a job already there is not added twice), then gives what the keys
-- have free to their oldest waiting jobs, as claim_concurrency_places does: a place freed between the acquire and
-- this call is not missed.
CREATE FUNCTION conveyor.line_up_for_concurrency_places(p_types text[], p_keys text[], p_job_ids text[],
                                                        p_limits integer[], p_properties jsonb[], p_bodies bytea[],
                                                        p_holder text, p_claim boolean, p_promise interval,
                                                        p_lease interval)
    RETURNS TABLE (line_id bigint, job_type text, concurrency_key text, job_id text, properties text, body bytea,
                   claims integer)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM conveyor.lock_concurrency_keys(p_types, p_keys);
    INSERT INTO conveyor.concurrency_waiting AS w (job_type, concurrency_key, job_id, properties, body)
    SELECT * FROM unnest(p_types, p_keys, p_job_ids, p_properties, p_bodies)
    ON CONFLICT (job_type, concurrency_key, job_id) DO NOTHING;
    RETURN QUERY SELECT * FROM conveyor.claim_concurrency_places(p_types, p_keys, p_limits, p_holder, p_claim,
                                                                 p_promise, p_lease);
END $$;
