-- The role conveyor-worker, conveyor-scheduler and the operator CLI connect as (CONVEYOR_PG_URL), apart from the
-- role that owns the schema and runs these migrations (CONVEYOR_PG_OWNER_URL). It reads and writes rows and nothing
-- else: it is no superuser, runs no DDL, truncates nothing, bypasses no trigger, and cannot change an event of the
-- audit trail (jobs/migrations/1004_application_role.sql). A DBA may create it beforehand, with a password; where it
-- does not exist it is created here, without one (the owner then needs CREATEROLE).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'conveyor_app') THEN
        CREATE ROLE conveyor_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    END IF;
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO conveyor_app', current_database());
END $$;

GRANT USAGE ON SCHEMA conveyor TO conveyor_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA conveyor TO conveyor_app;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA conveyor TO conveyor_app;
-- Which migrations ran is the owner's record.
REVOKE INSERT, UPDATE, DELETE ON conveyor.schema_migrations FROM conveyor_app;
-- Tables and sequences later migrations create get the same grants.
ALTER DEFAULT PRIVILEGES IN SCHEMA conveyor GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO conveyor_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA conveyor GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO conveyor_app;

-- The one DDL the services need: the job history's day partitions, made and dropped by the workers' housekeeping.
-- It runs with the owner's rights (SECURITY DEFINER, on a fixed search_path: every name in it is qualified), and
-- only the application role may call it.
ALTER FUNCTION conveyor.maintain_job_history(interval) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION conveyor.maintain_job_history(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION conveyor.maintain_job_history(interval) TO conveyor_app;
