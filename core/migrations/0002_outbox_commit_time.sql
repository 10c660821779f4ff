-- An outbox row's age must count from when it was written, not from when its transaction began: a job that runs
-- longer than the sweep interval would otherwise commit rows the sweeper already takes for leftovers, and both
-- would publish them.
ALTER TABLE conveyor.outbox ALTER COLUMN created_at SET DEFAULT clock_timestamp();
