-- pgbench's side of the ledger_e2e figure (tests/bench/run), one job per commit: the statements conveyor-worker
-- runs for one diag.ledger job in a transaction of its own (the inbox claim, the ledger write), sent the same way
-- (pgbench -M extended). Grouped, as the worker groups them, the run script writes ledger_grouped.sql itself.
\set n random(1, 1000000000000)
BEGIN;
INSERT INTO conveyor.inbox (message_id, type) VALUES ('pgbench-ledger-' || :n, 'diag.ledger') ON CONFLICT DO NOTHING;
INSERT INTO conveyor.diag_ledger (job_id, applied) VALUES ('pgbench-ledger-' || :n, 1) ON CONFLICT (job_id) DO UPDATE SET applied = diag_ledger.applied + 1;
END;
