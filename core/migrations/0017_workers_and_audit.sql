-- Workers on record: every conveyor-worker process writes its row at start and every heartbeat interval (a few
-- seconds), and marks it stopped at a clean shutdown. A row silent for three intervals is a worker that is gone
-- (killed, partitioned, its pod evicted). One row per process start: a restarted pod with the same name is a new
-- instance, and the old row stays, stopped or gone, until the scheduler prunes it a day later.
CREATE TABLE conveyor.workers (
    instance_id           uuid PRIMARY KEY,
    name                  text NOT NULL,
    version               text NOT NULL,
    host                  text NOT NULL,
    pid                   integer NOT NULL,
    queues                text[] NOT NULL,
    concurrency           integer NOT NULL CHECK (concurrency > 0),
    in_flight             integer NOT NULL DEFAULT 0 CHECK (in_flight >= 0),
    succeeded             bigint NOT NULL DEFAULT 0,
    retried               bigint NOT NULL DEFAULT 0,
    dead_lettered         bigint NOT NULL DEFAULT 0,
    heartbeat_interval_ms integer NOT NULL CHECK (heartbeat_interval_ms > 0),
    started_at            timestamptz NOT NULL DEFAULT now(),
    last_seen_at          timestamptz NOT NULL DEFAULT now(),
    stopped_at            timestamptz
);
CREATE INDEX workers_last_seen_at ON conveyor.workers (last_seen_at);

-- The audit log: who cancelled, paused, resumed, replayed, purged or applied flow limits, when, and which jobs it
-- touched. Each row is written in the transaction that makes the change, whichever way in asked for it (the HTTP
-- API, the console, the CLI), so a change without its row, or a row without its change, cannot exist. A replay
-- gathers the job ids of its chunks into its one row as each chunk commits. It is the operators' record and is kept.
CREATE TABLE conveyor.audit_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL CHECK (length(actor) BETWEEN 1 AND 300),
    action  text NOT NULL CHECK (action IN ('cancel', 'pause', 'resume', 'replay', 'purge', 'apply_flow_limits')),
    target  text NOT NULL,
    job_ids text[] NOT NULL DEFAULT '{}',
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON conveyor.audit_log (at);
CREATE INDEX audit_log_job_ids ON conveyor.audit_log USING gin (job_ids);
