-- Dead letters, archived from conveyor.<family>.dlq by conveyor-scheduler: each message is inserted here and
-- acknowledged on the queue only after the insert commits, so a dead letter is always in the queue, here, or both
-- for a moment (archive_key makes the second copy a no-op). Ops inspect, group, replay and purge them here, where
-- reading never redelivers or reorders anything.
CREATE TABLE conveyor.dead_letters (
    id             bigserial PRIMARY KEY,
    job_id         text NOT NULL,
    type           text NOT NULL,
    family         text NOT NULL,
    queue          text NOT NULL,
    routing_key    text NOT NULL,
    reason         text NOT NULL,
    error          text NOT NULL,
    -- The error with ids, numbers and quoted values replaced by placeholders (error_pattern), and its hash: jobs
    -- that failed the same way fall into one group whatever their ids.
    error_pattern  text NOT NULL,
    fingerprint    text NOT NULL,
    attempts       integer NOT NULL,
    failed_at      timestamptz NOT NULL,
    archived_at    timestamptz NOT NULL DEFAULT now(),
    correlation_id text,
    -- Every header of the message as it arrived (x-conveyor-*, traceparent …), and its body untouched.
    headers        jsonb NOT NULL,
    body           bytea NOT NULL,
    -- A message redelivered from the DLQ (the archiver crashed between commit and ack) has the same key.
    archive_key    text NOT NULL UNIQUE,
    state          text NOT NULL DEFAULT 'dead',
    replayed_at    timestamptz,
    replayed_by    text,
    replayed_as    text,
    CONSTRAINT dead_letters_state CHECK (state IN ('dead', 'replayed'))
);
CREATE INDEX dead_letters_dead ON conveyor.dead_letters (failed_at) WHERE state = 'dead';
CREATE INDEX dead_letters_fingerprint ON conveyor.dead_letters (fingerprint) WHERE state = 'dead';
CREATE INDEX dead_letters_job_id ON conveyor.dead_letters (job_id);

-- Replays per dead-letter queue since the beginning, for conveyor_dlq_replayed_total: a counter must not fall when
-- replayed rows are purged, so it is kept apart from them and advanced in the transaction that marks them.
CREATE TABLE conveyor.dead_letter_replays (
    queue    text PRIMARY KEY,
    replayed bigint NOT NULL DEFAULT 0
);
