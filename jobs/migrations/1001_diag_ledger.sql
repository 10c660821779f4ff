-- diag.ledger counts how often each job's effect was applied: anything but 1 is a lost or duplicated effect.
CREATE TABLE conveyor.diag_ledger (
    job_id  text PRIMARY KEY,
    applied integer NOT NULL
);
