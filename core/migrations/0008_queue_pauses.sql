-- Pauses: a family (job_type '') or one job type of it that workers do not start jobs of. `conveyor queues pause`
-- and POST /v1/queues/{family}/pause write the row, then tell every worker on the conveyor.control exchange; workers
-- read the table at start and every 2 s, so one that missed the broadcast (or started later) still honours it.
-- A resume keeps the row with paused = false: its version orders it after the pause it ends. The version comes
-- from one sequence and is drawn when the row is written (under the row's lock), so for each row a later commit
-- always carries a higher version, and a worker applies a state only if its version is higher than the one it has.
CREATE SEQUENCE conveyor.queue_pause_versions;

CREATE TABLE conveyor.queue_pauses (
    family     text NOT NULL,
    job_type   text NOT NULL DEFAULT '',
    paused     boolean NOT NULL,
    version    bigint NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text NOT NULL,
    PRIMARY KEY (family, job_type),
    CONSTRAINT queue_pauses_family CHECK (family ~ '^[a-z][a-z0-9_]{0,63}$'),
    CONSTRAINT queue_pauses_job_type CHECK (job_type = '' OR starts_with(job_type, family || '.'))
);
