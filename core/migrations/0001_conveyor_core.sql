-- Conveyor's own tables. conveyor.schema_migrations is created by `conveyor migrate` itself.

-- Exactly-once effects: a job that touches the database records its message id here in the same transaction.
-- A redelivered job whose id is present is acknowledged as a duplicate without running again. Rows older than
-- the worker's --inbox-retention are pruned.
CREATE TABLE conveyor.inbox (
    message_id   text PRIMARY KEY,
    type         text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_processed_at ON conveyor.inbox (processed_at);

-- Messages a job emits, written in the job's transaction and published after it commits; a row still here
-- after a crash is published by the sweeper. message_id is derived from the emitting job, so publishing a row
-- twice yields a duplicate that the inbox absorbs.
CREATE TABLE conveyor.outbox (
    id             bigserial PRIMARY KEY,
    message_id     text NOT NULL UNIQUE,
    exchange       text NOT NULL,
    routing_key    text NOT NULL,
    correlation_id text,
    traceparent    text,
    body           text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_created_at ON conveyor.outbox (created_at);

-- Poison-message quarantine: a redelivered job records each start here before it runs, so a job that was
-- running whenever a worker died can be told from the jobs that were only prefetched.
CREATE TABLE conveyor.job_executions (
    job_id          text PRIMARY KEY,
    queue           text NOT NULL,
    starts          integer NOT NULL DEFAULT 0,
    isolated_starts integer NOT NULL DEFAULT 0,
    last_started_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_executions_last_started_at ON conveyor.job_executions (last_started_at);
