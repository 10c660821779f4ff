-- pgbench's side of the orders_place figure (tests/bench/run): the statements conveyor-worker runs for one
-- orders.place job of two lines (jobs/orders/orders.cpp, with the worker's inbox claim and outbox write: the
-- reservation request, the order's deadline through the delay ladder and the projection update), with the same
-- parameters, sent the same way (pgbench -M extended: one parse/bind/execute per statement).
-- The baseline is PostgreSQL alone; the ratio measures what the broker, the runtime, the handler and the outbox
-- relay (publishing, and deleting published rows in batches) add.
\set n random(1, 1000000000000)
\set c random(0, 999)
\set p1 random(0, 49)
\set p2 random(50, 99)
BEGIN;
INSERT INTO conveyor.inbox (message_id, type) VALUES ('pgbench-' || :n, 'orders.place') ON CONFLICT DO NOTHING;
SELECT id, price_cents FROM shop.products WHERE id = ANY(ARRAY['bench-p' || :p1, 'bench-p' || :p2]::text[]);
WITH customer AS (  INSERT INTO shop.customers AS c (id, email, name) VALUES ('bench-c' || :c, 'c' || :c || '@bench.example', NULLIF('', ''))   ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = coalesce(excluded.name, c.name)   WHERE (c.email, c.name) IS DISTINCT FROM (excluded.email, coalesce(excluded.name, c.name))), placed AS (  INSERT INTO shop.orders (id, customer_id, currency, total_cents, status, version, placed_at, updated_at)   VALUES ('pgbench-' || :n, 'bench-c' || :c, 'EUR', 3000, 'placed', 1, now(), now())   ON CONFLICT (id) DO NOTHING RETURNING id), lines AS (  INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price_cents)   SELECT placed.id, l.product_id, l.quantity, l.price   FROM placed, unnest(ARRAY['bench-p' || :p1, 'bench-p' || :p2]::text[], '{1,2}'::integer[], '{1000,1000}'::bigint[]) AS l(product_id, quantity, price)) INSERT INTO shop.events (aggregate_id, version, type, data) SELECT placed.id, 1, 'OrderPlaced', '{"customer_id":"c","currency":"EUR","total_cents":3000,"item_count":3,"items":[{"product_id":"bench-p1","quantity":1,"unit_price_cents":1000},{"product_id":"bench-p51","quantity":2,"unit_price_cents":1000}]}'::jsonb FROM placed RETURNING id;
INSERT INTO conveyor.outbox (message_id, exchange, routing_key, correlation_id, traceparent, body) SELECT m.id, m.exchange, m.routing_key, m.correlation_id, NULLIF(m.traceparent, ''), m.body FROM unnest(ARRAY['pgbench-' || :n || '/0', 'pgbench-' || :n || '/1', 'pgbench-' || :n || '/2']::text[], '{conveyor.jobs,conveyor.delay.21,conveyor.jobs}'::text[], '{inventory.reserve,0.0.0.0.0.0.0.0.0.0.0.0.1.1.1.0.0.0.0.1.0.0.orders.expire,projections.update}'::text[], ARRAY['pgbench-' || :n, 'pgbench-' || :n, 'pgbench-' || :n]::text[], '{"","",""}'::text[], '{"{\"order_id\":\"o\",\"items\":[{\"product_id\":\"bench-p1\",\"quantity\":1},{\"product_id\":\"bench-p51\",\"quantity\":2}]}","{\"order_id\":\"o\"}","{\"event_id\":2}"}'::text[]) WITH ORDINALITY AS m(id, exchange, routing_key, correlation_id, traceparent, body, position) ORDER BY m.position RETURNING id, (extract(epoch FROM created_at) * 1000)::bigint, message_id;
END;
