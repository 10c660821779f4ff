-- Flow control: the limits in force (`conveyor flow apply`), and the shared state of per-key concurrency limits.

-- Every applied flow file, newest version in force. Workers read the newest one at start and poll for a newer one.
CREATE TABLE conveyor.flow_config (
    version    bigserial PRIMARY KEY,
    source     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL
);

-- The places of per-key concurrency limits: one row per job that runs (holder: the worker running it, expires_at:
-- its lease, renewed while it runs) or was promised a place as it left the waiting line (holder NULL until it
-- arrives at a worker). Rows past expires_at do not count: a worker that died frees its places when they expire.
CREATE TABLE conveyor.concurrency_slots (
    job_type        text NOT NULL,
    concurrency_key text NOT NULL,
    job_id          text NOT NULL,
    holder          text,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (job_type, concurrency_key, job_id)
);
CREATE INDEX concurrency_slots_holder ON conveyor.concurrency_slots (holder) WHERE holder IS NOT NULL;
CREATE INDEX concurrency_slots_expiry ON conveyor.concurrency_slots (expires_at);

-- Jobs over their key's limit, taken off the broker (acked) so they hold no prefetch place and block no other key.
-- A promoted job (released_at set) has been promised a place and is published again to its queue, then deleted; the
-- publishing touches no place, so it never waits for (or deadlocks with) the workers taking and freeing them.
CREATE TABLE conveyor.concurrency_waiting (
    id              bigserial PRIMARY KEY,
    job_type        text NOT NULL,
    concurrency_key text NOT NULL,
    job_id          text NOT NULL,
    properties      jsonb NOT NULL,
    body            bytea NOT NULL,
    waiting_since   timestamptz NOT NULL DEFAULT now(),
    released_at     timestamptz
);
CREATE UNIQUE INDEX concurrency_waiting_job ON conveyor.concurrency_waiting (job_type, concurrency_key, job_id);
CREATE INDEX concurrency_waiting_line ON conveyor.concurrency_waiting (job_type, concurrency_key, id)
    WHERE released_at IS NULL;
CREATE INDEX concurrency_waiting_released ON conveyor.concurrency_waiting (id) WHERE released_at IS NOT NULL;

-- Every change to one key's places happens under this lock, taken in the order of its hash by every function below,
-- so that counting the places and taking one is one step across workers. 1668247139 is "conc" in ASCII: the class
-- of these advisory locks, apart from the scheduler's and the migrations'.
CREATE FUNCTION conveyor.concurrency_key_lock(job_type text, concurrency_key text) RETURNS integer
    LANGUAGE sql IMMUTABLE AS $$ SELECT hashtext(job_type || E'\n' || concurrency_key) $$;

-- Gives the oldest waiting jobs of a key the places it has free; returns how many it promoted.
CREATE FUNCTION conveyor.promote_waiting(p_type text, p_key text, p_limit integer, p_promise interval)
    RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    free integer;
    promoted integer;
BEGIN
    SELECT p_limit - count(*) INTO free FROM conveyor.concurrency_slots
     WHERE job_type = p_type AND concurrency_key = p_key AND expires_at > now();
    IF free <= 0 THEN
        RETURN 0;
    END IF;
    WITH chosen AS (
        SELECT id FROM conveyor.concurrency_waiting
         WHERE job_type = p_type AND concurrency_key = p_key AND released_at IS NULL
         ORDER BY id LIMIT free
    ), released AS (
        UPDATE conveyor.concurrency_waiting w SET released_at = now() FROM chosen WHERE w.id = chosen.id
        RETURNING w.job_id
    )
    INSERT INTO conveyor.concurrency_slots AS s (job_type, concurrency_key, job_id, holder, expires_at)
    SELECT p_type, p_key, job_id, NULL, now() + p_promise FROM released
    ON CONFLICT (job_type, concurrency_key, job_id) DO UPDATE SET holder = NULL, expires_at = excluded.expires_at;
    GET DIAGNOSTICS promoted = ROW_COUNT;
    RETURN promoted;
END $$;

-- Takes a place for each job that may start: the one it was promised (or one of its own whose lease expired: its
-- worker died), else a free one if no job of its key waits in line before it. A second copy of a job whose place is
-- held (a redelivery while the first may still run) gets none: it waits in line. Returns the job ids that got one.
CREATE FUNCTION conveyor.acquire_concurrency_slots(p_types text[], p_keys text[], p_job_ids text[],
                                                   p_limits integer[], p_holder text, p_lease interval)
    RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    request record;
    held record;
    live integer;
BEGIN
    FOR request IN
        SELECT r.job_type, r.concurrency_key, r.job_id, r.job_limit
          FROM unnest(p_types, p_keys, p_job_ids, p_limits) AS r(job_type, concurrency_key, job_id, job_limit)
         ORDER BY conveyor.concurrency_key_lock(r.job_type, r.concurrency_key)
    LOOP
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
                RETURN NEXT request.job_id;
            END IF;
            CONTINUE;
        END IF;
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM conveyor.concurrency_waiting w
             WHERE w.job_type = request.job_type AND w.concurrency_key = request.concurrency_key
               AND w.released_at IS NULL);
        SELECT count(*) INTO live FROM conveyor.concurrency_slots s
         WHERE s.job_type = request.job_type AND s.concurrency_key = request.concurrency_key AND s.expires_at > now();
        IF live < request.job_limit THEN
            INSERT INTO conveyor.concurrency_slots (job_type, concurrency_key, job_id, holder, expires_at)
            VALUES (request.job_type, request.concurrency_key, request.job_id, p_holder, now() + p_lease);
            RETURN NEXT request.job_id;
        END IF;
    END LOOP;
END $$;

-- Locks the keys of a batch, in the order every function here takes them.
CREATE FUNCTION conveyor.lock_concurrency_keys(p_types text[], p_keys text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    line record;
BEGIN
    FOR line IN
        SELECT DISTINCT conveyor.concurrency_key_lock(r.job_type, r.concurrency_key) AS lock
          FROM unnest(p_types, p_keys) AS r(job_type, concurrency_key) ORDER BY lock
    LOOP
        PERFORM pg_advisory_xact_lock(1668247139, line.lock);
    END LOOP;
END $$;

-- Promotes what each key of a batch has free (its keys locked already); returns how many it promoted.
CREATE FUNCTION conveyor.promote_keys(p_types text[], p_keys text[], p_limits integer[], p_promise interval)
    RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    line record;
    promoted integer := 0;
BEGIN
    FOR line IN
        SELECT r.job_type, r.concurrency_key, max(r.job_limit) AS job_limit
          FROM unnest(p_types, p_keys, p_limits) AS r(job_type, concurrency_key, job_limit)
         GROUP BY r.job_type, r.concurrency_key
    LOOP
        promoted := promoted + conveyor.promote_waiting(line.job_type, line.concurrency_key, line.job_limit, p_promise);
    END LOOP;
    RETURN promoted;
END $$;

-- Puts jobs that got no place in their key's line (a job already there is not added twice), then promotes what the
-- keys have free: a place freed between the acquire and this call is not missed. Returns how many it promoted.
CREATE FUNCTION conveyor.wait_for_concurrency_slots(p_types text[], p_keys text[], p_job_ids text[],
                                                    p_limits integer[], p_properties jsonb[], p_bodies bytea[],
                                                    p_promise interval)
    RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    PERFORM conveyor.lock_concurrency_keys(p_types, p_keys);
    INSERT INTO conveyor.concurrency_waiting (job_type, concurrency_key, job_id, properties, body)
    SELECT * FROM unnest(p_types, p_keys, p_job_ids, p_properties, p_bodies)
    ON CONFLICT (job_type, concurrency_key, job_id) DO NOTHING;
    RETURN conveyor.promote_keys(p_types, p_keys, p_limits, p_promise);
END $$;

-- Frees the places of jobs that ended (or of promised jobs that will not run), and promotes waiting jobs into them.
-- Returns how many it promoted.
CREATE FUNCTION conveyor.release_concurrency_slots(p_types text[], p_keys text[], p_job_ids text[],
                                                   p_limits integer[], p_holder text, p_promise interval)
    RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    PERFORM conveyor.lock_concurrency_keys(p_types, p_keys);
    DELETE FROM conveyor.concurrency_slots s
     USING unnest(p_types, p_keys, p_job_ids) AS r(job_type, concurrency_key, job_id)
     WHERE s.job_type = r.job_type AND s.concurrency_key = r.concurrency_key AND s.job_id = r.job_id
       AND (s.holder = p_holder OR s.holder IS NULL);
    RETURN conveyor.promote_keys(p_types, p_keys, p_limits, p_promise);
END $$;

-- The periodic pass: promotes into places that expired (a worker died) or that a raised limit added. Returns how
-- many it promoted. (Waiting jobs of a type no longer limited are released, and long-expired places deleted, by
-- statements of their own: outside these key locks, they cannot deadlock with a worker's batch.)
CREATE FUNCTION conveyor.promote_concurrency_waiting(p_types text[], p_limits integer[], p_promise interval)
    RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    line record;
    promoted integer := 0;
BEGIN
    FOR line IN
        SELECT k.job_type, k.concurrency_key, l.job_limit,
               conveyor.concurrency_key_lock(k.job_type, k.concurrency_key) AS lock
          FROM (SELECT DISTINCT job_type, concurrency_key FROM conveyor.concurrency_waiting
                 WHERE released_at IS NULL) k
          JOIN unnest(p_types, p_limits) AS l(job_type, job_limit) ON l.job_type = k.job_type
         ORDER BY lock
    LOOP
        PERFORM pg_advisory_xact_lock(1668247139, line.lock);
        promoted := promoted + conveyor.promote_waiting(line.job_type, line.concurrency_key, line.job_limit, p_promise);
    END LOOP;
    RETURN promoted;
END $$;
