-- Fleet-wide rate limits: a token bucket per job type (or per type and key), the line of jobs waiting for a token,
-- and the passes of jobs that left the line with their token taken.

-- A bucket holds up to `burst` tokens and gains `per_second` of them each second; each start takes one. The refill is
-- computed when tokens are taken (from clock_timestamp(), under the row's lock, so it never runs backwards), not by a
-- timer.
CREATE TABLE conveyor.rate_buckets (
    job_type    text NOT NULL,
    rate_key    text NOT NULL,
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL,
    PRIMARY KEY (job_type, rate_key)
);

-- Jobs that found no token, taken off the broker (acked) so they hold no prefetch place and block no other job. A
-- released job (released_at set) took its token as it left the line, is published again to its queue, then deleted.
CREATE TABLE conveyor.rate_waiting (
    id            bigserial PRIMARY KEY,
    job_type      text NOT NULL,
    rate_key      text NOT NULL,
    job_id        text NOT NULL,
    properties    jsonb NOT NULL,
    body          bytea NOT NULL,
    waiting_since timestamptz NOT NULL DEFAULT now(),
    released_at   timestamptz
);
CREATE UNIQUE INDEX rate_waiting_job ON conveyor.rate_waiting (job_type, rate_key, job_id);
CREATE INDEX rate_waiting_line ON conveyor.rate_waiting (job_type, rate_key, id) WHERE released_at IS NULL;
CREATE INDEX rate_waiting_released ON conveyor.rate_waiting (id) WHERE released_at IS NOT NULL;

-- A job released from the line holds its token here until it reaches a worker (which starts it without taking
-- another) or the pass expires.
CREATE TABLE conveyor.rate_passes (
    job_type   text NOT NULL,
    rate_key   text NOT NULL,
    job_id     text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (job_type, rate_key, job_id)
);
CREATE INDEX rate_passes_expiry ON conveyor.rate_passes (expires_at);

-- Locks a bucket (creating it full), so that what is counted before tokens are taken stays true until they are.
CREATE FUNCTION conveyor.lock_rate_bucket(p_type text, p_key text, p_burst double precision)
    RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO conveyor.rate_buckets (job_type, rate_key, tokens, refilled_at)
    VALUES (p_type, p_key, p_burst, clock_timestamp())
    ON CONFLICT (job_type, rate_key) DO NOTHING;
    PERFORM 1 FROM conveyor.rate_buckets WHERE job_type = p_type AND rate_key = p_key FOR UPDATE;
END $$;

-- Takes up to `p_wanted` whole tokens from a bucket; returns how many it took. A live pass is a token taken but not
-- yet used to start a job, so the bucket holds at most `burst` less the live passes: released jobs that reach the
-- workers late and together (behind a backlog in their queue) then start no more than `burst` at once.
CREATE FUNCTION conveyor.take_rate_tokens(p_type text, p_key text, p_rate double precision,
                                          p_burst double precision, p_wanted integer)
    RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    bucket record;
    passes integer;
    taken_at timestamptz;
    available double precision;
    granted integer;
BEGIN
    IF p_wanted <= 0 THEN
        RETURN 0;
    END IF;
    PERFORM conveyor.lock_rate_bucket(p_type, p_key, p_burst);
    SELECT tokens, refilled_at INTO bucket FROM conveyor.rate_buckets WHERE job_type = p_type AND rate_key = p_key;
    SELECT count(*) INTO passes FROM conveyor.rate_passes
     WHERE job_type = p_type AND rate_key = p_key AND expires_at > now();
    taken_at := greatest(clock_timestamp(), bucket.refilled_at);
    available := greatest(0, least(p_burst - passes, bucket.tokens
                          + p_rate * extract(epoch FROM taken_at - bucket.refilled_at)::double precision));
    granted := least(p_wanted, floor(available)::integer);
    UPDATE conveyor.rate_buckets SET tokens = available - granted, refilled_at = taken_at
     WHERE job_type = p_type AND rate_key = p_key;
    RETURN granted;
END $$;

-- Gives each job that may start its token: the one it took as it left the line (its pass), else a fresh one if no job
-- of its bucket waits in line before it. Buckets are taken in one order by every caller. Returns the job ids that
-- got one.
CREATE FUNCTION conveyor.acquire_rate_tokens(p_types text[], p_keys text[], p_job_ids text[],
                                             p_rates double precision[], p_bursts integer[])
    RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    bucket record;
    passed text[];
    fresh text[];
    granted integer;
BEGIN
    FOR bucket IN
        SELECT r.job_type, r.rate_key, max(r.rate) AS rate, max(r.burst) AS burst,
               array_agg(r.job_id ORDER BY r.arrival) AS job_ids
          FROM unnest(p_types, p_keys, p_job_ids, p_rates, p_bursts)
               WITH ORDINALITY AS r(job_type, rate_key, job_id, rate, burst, arrival)
         GROUP BY r.job_type, r.rate_key
         ORDER BY r.job_type, r.rate_key
    LOOP
        PERFORM conveyor.lock_rate_bucket(bucket.job_type, bucket.rate_key, bucket.burst);
        WITH used AS (
            DELETE FROM conveyor.rate_passes p
             WHERE p.job_type = bucket.job_type AND p.rate_key = bucket.rate_key AND p.job_id = ANY (bucket.job_ids)
               AND p.expires_at > now()
            RETURNING p.job_id
        )
        SELECT coalesce(array_agg(used.job_id), '{}') INTO passed FROM used;
        RETURN QUERY SELECT unnest(passed);
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM conveyor.rate_waiting w
             WHERE w.job_type = bucket.job_type AND w.rate_key = bucket.rate_key AND w.released_at IS NULL);
        SELECT coalesce(array_agg(j.job_id ORDER BY j.arrival), '{}') INTO fresh
          FROM unnest(bucket.job_ids) WITH ORDINALITY AS j(job_id, arrival) WHERE j.job_id <> ALL (passed);
        granted := conveyor.take_rate_tokens(bucket.job_type, bucket.rate_key, bucket.rate, bucket.burst,
                                             cardinality(fresh));
        RETURN QUERY SELECT unnest(fresh[1:granted]);
    END LOOP;
END $$;

-- Releases the oldest waiting jobs of each bucket that has tokens, at most `p_most` per bucket: each takes its token
-- and a pass. Only one caller at a time does this (the others release nothing at once): the fleet's workers take
-- turns. Returns how many it released and, when a line is left, in how many seconds its bucket gains its next token
-- (so the caller comes back then rather than late, when a small bucket would have stopped filling). 1918989413 is
-- "rate" in ASCII, the class of this advisory lock.
CREATE FUNCTION conveyor.release_rate_waiting(p_types text[], p_rates double precision[], p_bursts integer[],
                                              p_pass interval, p_most integer,
                                              OUT released integer, OUT next_token_in double precision)
    LANGUAGE plpgsql AS $$
DECLARE
    bucket record;
    waiting integer;
    granted integer;
    left_over double precision;
BEGIN
    released := 0;
    IF NOT pg_try_advisory_xact_lock(1918989413, 0) THEN
        RETURN;
    END IF;
    FOR bucket IN
        SELECT k.job_type, k.rate_key, l.rate, l.burst
          FROM (SELECT DISTINCT job_type, rate_key FROM conveyor.rate_waiting WHERE released_at IS NULL) k
          JOIN unnest(p_types, p_rates, p_bursts) AS l(job_type, rate, burst) ON l.job_type = k.job_type
         ORDER BY k.job_type, k.rate_key
    LOOP
        PERFORM conveyor.lock_rate_bucket(bucket.job_type, bucket.rate_key, bucket.burst);
        SELECT count(*) INTO waiting FROM (
            SELECT 1 FROM conveyor.rate_waiting w
             WHERE w.job_type = bucket.job_type AND w.rate_key = bucket.rate_key AND w.released_at IS NULL
             LIMIT p_most) line;
        granted := conveyor.take_rate_tokens(bucket.job_type, bucket.rate_key, bucket.rate, bucket.burst, waiting);
        SELECT tokens INTO left_over FROM conveyor.rate_buckets
         WHERE job_type = bucket.job_type AND rate_key = bucket.rate_key;
        IF waiting > granted AND left_over < 1 THEN
            next_token_in := least(next_token_in, (1 - left_over) / bucket.rate);
        END IF;
        CONTINUE WHEN granted = 0;
        WITH chosen AS (
            SELECT w.id FROM conveyor.rate_waiting w
             WHERE w.job_type = bucket.job_type AND w.rate_key = bucket.rate_key AND w.released_at IS NULL
             ORDER BY w.id LIMIT granted
        ), released_now AS (
            UPDATE conveyor.rate_waiting w SET released_at = now() FROM chosen WHERE w.id = chosen.id
            RETURNING w.job_type, w.rate_key, w.job_id
        )
        INSERT INTO conveyor.rate_passes AS p (job_type, rate_key, job_id, expires_at)
        SELECT job_type, rate_key, job_id, now() + p_pass FROM released_now
        ON CONFLICT (job_type, rate_key, job_id) DO UPDATE SET expires_at = excluded.expires_at;
        released := released + granted;
    END LOOP;
END $$;
