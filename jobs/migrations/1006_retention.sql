-- Retention. The event store is the audit trail: its events are never changed or lost, only moved, a whole closed
-- month at a time, into shop.events_archive, which rebuilds read as well (orders.archive, through
-- shop.archive_closed_months). The orders of an archived month keep their rows, marked archived_at, and are closed:
-- no event is appended to them again, so their projection checkpoints go too. Email logs are pruned by age
-- (emails.prune).
CREATE TABLE shop.events_archive (LIKE shop.events INCLUDING CONSTRAINTS INCLUDING DEFAULTS);
ALTER TABLE shop.events_archive ADD PRIMARY KEY (id), ADD UNIQUE (aggregate_id, version);

CREATE TABLE shop.archived_months (
    month       date PRIMARY KEY CHECK (month = date_trunc('month', month)),
    orders      integer NOT NULL,
    events      bigint NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE shop.orders ADD COLUMN archived_at timestamptz;
-- emails.prune's batches find old rows by when they were sent.
CREATE INDEX email_log_sent_at ON shop.email_log (sent_at);
CREATE INDEX orders_placed_at ON shop.orders (placed_at) WHERE archived_at IS NULL;

CREATE FUNCTION shop.refuse_archive_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'shop.events_archive is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER events_archive_append_only BEFORE UPDATE OR DELETE ON shop.events_archive
    FOR EACH ROW EXECUTE FUNCTION shop.refuse_archive_change();
CREATE TRIGGER events_archive_no_truncate BEFORE TRUNCATE ON shop.events_archive
    FOR EACH STATEMENT EXECUTE FUNCTION shop.refuse_archive_change();

-- An event leaves shop.events only as a move: deleted while an identical copy is in the archive.
CREATE OR REPLACE FUNCTION shop.refuse_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM shop.events_archive a
         WHERE a.id = OLD.id AND a.aggregate_id = OLD.aggregate_id AND a.version = OLD.version
           AND a.type = OLD.type AND a.data = OLD.data AND a.occurred_at = OLD.occurred_at) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'shop.events is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;

-- Archives every whole month that ended before `before`, oldest first, and stops at the first that cannot be: one
-- with an order whose saga has not ended, or whose read models have not caught up with it. A month is archived in
-- one go: its orders marked, their events moved, their checkpoints deleted. Returns each month it looked at.
CREATE FUNCTION shop.archive_closed_months(before date)
    RETURNS TABLE (month date, orders integer, events bigint, outcome text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    candidate date;
    unfinished integer;
    behind integer;
BEGIN
    FOR candidate IN
        SELECT DISTINCT date_trunc('month', o.placed_at AT TIME ZONE 'UTC')::date FROM shop.orders o
         WHERE o.archived_at IS NULL AND o.placed_at < (date_trunc('month', before::timestamp) AT TIME ZONE 'UTC')
         ORDER BY 1
    LOOP
        month := candidate;
        CREATE TEMP TABLE IF NOT EXISTS month_orders (id text PRIMARY KEY, version integer) ON COMMIT DROP;
        TRUNCATE month_orders;
        INSERT INTO month_orders
            SELECT o.id, o.version FROM shop.orders o
             WHERE o.archived_at IS NULL AND o.placed_at >= (candidate::timestamp AT TIME ZONE 'UTC')
               AND o.placed_at < ((candidate + interval '1 month') AT TIME ZONE 'UTC')
             FOR UPDATE OF o;
        SELECT count(*) INTO unfinished FROM shop.orders o JOIN month_orders m ON m.id = o.id
         WHERE o.status NOT IN ('confirmed', 'cancelled', 'rejected', 'refunded');
        SELECT count(*) INTO behind FROM month_orders m CROSS JOIN unnest(shop.projections()) AS p(name)
         WHERE NOT EXISTS (SELECT 1 FROM shop.projection_checkpoints c
                            WHERE c.projection = p.name AND c.aggregate_id = m.id AND c.version = m.version);
        SELECT count(*) INTO orders FROM month_orders;
        IF unfinished > 0 OR behind > 0 THEN
            events := 0;
            outcome := format('kept: %s order(s) not ended, %s projection(s) behind', unfinished, behind);
            RETURN NEXT;
            RETURN;
        END IF;
        INSERT INTO shop.events_archive SELECT e.* FROM shop.events e JOIN month_orders m ON m.id = e.aggregate_id;
        GET DIAGNOSTICS events = ROW_COUNT;
        DELETE FROM shop.events e USING month_orders m WHERE e.aggregate_id = m.id;
        DELETE FROM shop.projection_checkpoints c USING month_orders m WHERE c.aggregate_id = m.id;
        UPDATE shop.orders o SET archived_at = now() FROM month_orders m WHERE o.id = m.id;
        INSERT INTO shop.archived_months (month, orders, events) VALUES (candidate, orders, events)
            ON CONFLICT ON CONSTRAINT archived_months_pkey
            DO UPDATE SET orders = shop.archived_months.orders + excluded.orders,
                          events = shop.archived_months.events + excluded.events;
        outcome := 'archived';
        RETURN NEXT;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION shop.archive_closed_months(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION shop.archive_closed_months(date) TO conveyor_app;

-- As 1002's, replaying the archive too (its orders keep no checkpoints: nothing is appended to them again).
CREATE OR REPLACE FUNCTION shop.rebuild_projection(p text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    e shop.events;
    replayed bigint := 0;
    previous shop.events;
BEGIN
    IF NOT p = ANY (shop.projections()) THEN
        RAISE EXCEPTION 'unknown projection %', p USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOCK TABLE shop.projection_checkpoints IN SHARE ROW EXCLUSIVE MODE;
    EXECUTE format('DELETE FROM shop.%I', p);
    DELETE FROM shop.projection_checkpoints WHERE projection = p;
    FOR e IN SELECT * FROM shop.events_archive ORDER BY aggregate_id, version LOOP
        PERFORM shop.apply_event(p, e);
        replayed := replayed + 1;
    END LOOP;
    -- The checkpoints come from the replayed events themselves: a later statement would see events committed
    -- after the replay's snapshot and mark them applied.
    FOR e IN SELECT * FROM shop.events ORDER BY aggregate_id, version LOOP
        IF previous.aggregate_id IS NOT NULL AND previous.aggregate_id <> e.aggregate_id THEN
            INSERT INTO shop.projection_checkpoints VALUES (p, previous.aggregate_id, previous.version);
        END IF;
        PERFORM shop.apply_event(p, e);
        previous := e;
        replayed := replayed + 1;
    END LOOP;
    IF previous.aggregate_id IS NOT NULL THEN
        INSERT INTO shop.projection_checkpoints VALUES (p, previous.aggregate_id, previous.version);
    END IF;
    RETURN replayed;
END $$;

-- As 1002's, but an update for an event that has been archived since finds its work done (0 steps) instead of
-- no event at all.
CREATE OR REPLACE FUNCTION shop.project_aggregate(event_id bigint) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    aggregate text;
    p text;
    applied_version integer;
    applied integer := 0;
    e shop.events;
BEGIN
    PERFORM set_config('lock_timeout', '1s', true);
    SELECT aggregate_id INTO aggregate FROM shop.events WHERE id = event_id;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM shop.events_archive WHERE id = event_id) THEN
            RETURN 0;
        END IF;
        RETURN NULL;
    END IF;
    FOREACH p IN ARRAY shop.projections() LOOP
        INSERT INTO shop.projection_checkpoints (projection, aggregate_id, version)
        VALUES (p, aggregate, 0) ON CONFLICT DO NOTHING;
        SELECT version INTO applied_version FROM shop.projection_checkpoints
         WHERE projection = p AND aggregate_id = aggregate FOR UPDATE;
        FOR e IN SELECT * FROM shop.events
                  WHERE aggregate_id = aggregate AND version > applied_version ORDER BY version LOOP
            IF e.version <> applied_version + 1 THEN
                RAISE EXCEPTION 'event % of % is missing (found %)', applied_version + 1, aggregate, e.version
                    USING ERRCODE = 'CV001';
            END IF;
            PERFORM shop.apply_event(p, e);
            applied_version := e.version;
            applied := applied + 1;
        END LOOP;
        UPDATE shop.projection_checkpoints SET version = applied_version
         WHERE projection = p AND aggregate_id = aggregate;
    END LOOP;
    RETURN applied;
END $$;

-- The application role reads the archive and the archived months; only the owner's function writes them.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON shop.events_archive, shop.archived_months FROM conveyor_app;
GRANT SELECT ON shop.events_archive, shop.archived_months TO conveyor_app;
