-- Each worker's circuit breakers as its heartbeat last saw them ({"payment_gateway": "open"}), so the console shows
-- which outside service a worker has stopped calling.
ALTER TABLE conveyor.workers ADD COLUMN circuit_breakers jsonb NOT NULL DEFAULT '{}';
