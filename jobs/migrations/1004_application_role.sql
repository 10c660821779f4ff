-- The shop's tables for the application role (core migration 0020): rows read and written, and the event store
-- only appended to and read. Its UPDATE, DELETE and TRUNCATE are refused by privilege (SQLSTATE 42501) before the
-- append-only triggers, which hold for the owner too, are even reached.
GRANT USAGE ON SCHEMA shop TO conveyor_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shop TO conveyor_app;
REVOKE UPDATE, DELETE, TRUNCATE ON shop.events FROM conveyor_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA shop TO conveyor_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA shop GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO conveyor_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA shop GRANT USAGE, SELECT ON SEQUENCES TO conveyor_app;
