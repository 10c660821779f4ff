-- Each worker's circuit breakers as its heartbeat last saw them ({"payment_gateway": "open"}), so the console shows
-- which outside service a worker has stopped calling.
ALTER TABLE conveyor.workers ADD COLUMN circuit_breakers jsonb NOT NULL DEFAULT '{}';

-- The worker's own estimate of the workers its queues need (conveyor_workers_needed), so the console can set it
-- beside the workers running without Prometheus.
ALTER TABLE conveyor.workers ADD COLUMN workers_needed integer;
