-- Cancellation tombstones: a job whose id is here does not run. `conveyor jobs cancel` and DELETE /v1/jobs/{id}
-- insert the row, then tell every worker on the conveyor.control exchange: a worker running the job cancels it, and
-- whichever worker takes it from a queue or the delay ladder later settles it as cancelled without running it.
-- Workers load the rows at start and follow new ones by seq, so one that was disconnected during the broadcast
-- still honours them. Rows go after the job history's retention.
CREATE TABLE conveyor.job_cancellations (
    job_id       text PRIMARY KEY,
    seq          bigserial NOT NULL UNIQUE,
    requested_at timestamptz NOT NULL DEFAULT now(),
    requested_by text NOT NULL,
    CONSTRAINT job_cancellations_job_id CHECK (length(job_id) BETWEEN 1 AND 128)
);
CREATE INDEX job_cancellations_requested_at ON conveyor.job_cancellations (requested_at);
