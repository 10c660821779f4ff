-- The back office's system of record: customers, products and their stock, orders, payments, an append-only
-- event store, the email log, and the read models that projections.update keeps from the events.
CREATE SCHEMA shop;

CREATE TABLE shop.customers (
    id         text PRIMARY KEY,
    email      text NOT NULL,
    name       text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shop.products (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    price_cents bigint NOT NULL CHECK (price_cents >= 0),
    stock       integer NOT NULL CHECK (stock >= 0)
);

-- placed → reserved → paid → confirmed, or → cancelled; placed → rejected when stock is short. The job
-- handlers refuse any other transition (jobs/orders/order_state.hpp).
CREATE TYPE shop.order_status AS ENUM ('placed', 'reserved', 'paid', 'confirmed', 'cancelled', 'rejected');

CREATE TABLE shop.orders (
    id            text PRIMARY KEY,
    customer_id   text NOT NULL REFERENCES shop.customers,
    currency      text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    total_cents   bigint NOT NULL CHECK (total_cents >= 0),
    status        shop.order_status NOT NULL,
    status_reason text,
    -- The version of the order's last event in shop.events: the next event is version + 1.
    version       integer NOT NULL,
    placed_at     timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX orders_customer ON shop.orders (customer_id);

CREATE TABLE shop.order_items (
    order_id         text NOT NULL REFERENCES shop.orders,
    product_id       text NOT NULL REFERENCES shop.products,
    quantity         integer NOT NULL CHECK (quantity > 0),
    unit_price_cents bigint NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

-- One payment per order: the gateway's idempotency key is derived from the order, so a retried charge finds
-- the same charge and this row is written once.
CREATE TABLE shop.payments (
    order_id        text PRIMARY KEY REFERENCES shop.orders,
    status          text NOT NULL CHECK (status IN ('captured', 'declined')),
    charge_id       text,
    amount_cents    bigint NOT NULL,
    currency        text NOT NULL,
    idempotency_key text NOT NULL,
    decline_code    text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- The audit trail and the source of every read model. Versions are per aggregate and gapless: an event is
-- appended while its order's row is locked, with the version the row holds plus one.
CREATE TABLE shop.events (
    id           bigserial PRIMARY KEY,
    aggregate_id text NOT NULL,
    version      integer NOT NULL CHECK (version > 0),
    type         text NOT NULL,
    data         jsonb NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (aggregate_id, version)
);

CREATE FUNCTION shop.refuse_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'shop.events is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON shop.events
    FOR EACH ROW EXECUTE FUNCTION shop.refuse_event_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON shop.events
    FOR EACH STATEMENT EXECUTE FUNCTION shop.refuse_event_change();

-- Every email, under its dedupe key. A job claims the key ('sending', until claimed_until) before it talks to the
-- mail server and marks it 'sent' in its own transaction afterwards: two jobs for the same email never send it
-- both, a retried one finds it sent, and the claim of a job that died expires.
CREATE TABLE shop.email_log (
    dedupe_key    text PRIMARY KEY,
    template      text NOT NULL,
    recipient     text NOT NULL,
    subject       text NOT NULL,
    message_id    text NOT NULL,
    status        text NOT NULL CHECK (status IN ('sending', 'sent')),
    claimed_by    text NOT NULL,
    claimed_until timestamptz NOT NULL,
    sent_at       timestamptz
);

-- Read models. Each is a function of the event stream alone (times come from the events, never from now()),
-- so rebuilding one from shop.events gives what the incremental updates gave.
CREATE TABLE shop.order_summary (
    order_id    text PRIMARY KEY,
    customer_id text NOT NULL,
    status      text NOT NULL,
    currency    text NOT NULL,
    total_cents bigint NOT NULL,
    item_count  integer NOT NULL,
    placed_at   timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE shop.customer_stats (
    customer_id          text NOT NULL,
    currency             text NOT NULL,
    order_count          integer NOT NULL,
    lifetime_value_cents bigint NOT NULL,
    PRIMARY KEY (customer_id, currency)
);

CREATE TABLE shop.daily_sales (
    day           date NOT NULL,
    currency      text NOT NULL,
    orders        integer NOT NULL,
    revenue_cents bigint NOT NULL,
    PRIMARY KEY (day, currency)
);

-- The last event version each projection has applied, per aggregate.
CREATE TABLE shop.projection_checkpoints (
    projection   text NOT NULL,
    aggregate_id text NOT NULL,
    version      integer NOT NULL,
    PRIMARY KEY (projection, aggregate_id)
);

-- Applies one event to one read model. The incremental update and the rebuild both call it, so they cannot
-- disagree about what an event means.
CREATE FUNCTION shop.apply_event(projection text, e shop.events) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    new_status text := CASE e.type
        WHEN 'OrderPlaced' THEN 'placed'
        WHEN 'StockReserved' THEN 'reserved'
        WHEN 'OrderRejected' THEN 'rejected'
        WHEN 'PaymentCaptured' THEN 'paid'
        WHEN 'OrderConfirmed' THEN 'confirmed'
        WHEN 'OrderCancelled' THEN 'cancelled'
    END;
    sale_day date := (e.occurred_at AT TIME ZONE 'UTC')::date;
BEGIN
    IF projection = 'order_summary' THEN
        IF e.type = 'OrderPlaced' THEN
            INSERT INTO shop.order_summary
                (order_id, customer_id, status, currency, total_cents, item_count, placed_at, updated_at)
            VALUES (e.aggregate_id, e.data->>'customer_id', new_status, e.data->>'currency',
                    (e.data->>'total_cents')::bigint, (e.data->>'item_count')::integer, e.occurred_at, e.occurred_at);
        ELSE
            UPDATE shop.order_summary
               SET status = coalesce(new_status, status), updated_at = e.occurred_at
             WHERE order_id = e.aggregate_id;
        END IF;
    ELSIF projection = 'customer_stats' THEN
        IF e.type = 'OrderPlaced' THEN
            INSERT INTO shop.customer_stats AS s (customer_id, currency, order_count, lifetime_value_cents)
            VALUES (e.data->>'customer_id', e.data->>'currency', 1, 0)
            ON CONFLICT (customer_id, currency) DO UPDATE SET order_count = s.order_count + 1;
        ELSIF e.type = 'PaymentCaptured' THEN
            INSERT INTO shop.customer_stats AS s (customer_id, currency, order_count, lifetime_value_cents)
            VALUES (e.data->>'customer_id', e.data->>'currency', 0, (e.data->>'amount_cents')::bigint)
            ON CONFLICT (customer_id, currency)
            DO UPDATE SET lifetime_value_cents = s.lifetime_value_cents + excluded.lifetime_value_cents;
        END IF;
    ELSIF projection = 'daily_sales' THEN
        IF e.type = 'PaymentCaptured' THEN
            INSERT INTO shop.daily_sales AS s (day, currency, orders, revenue_cents)
            VALUES (sale_day, e.data->>'currency', 1, (e.data->>'amount_cents')::bigint)
            ON CONFLICT (day, currency)
            DO UPDATE SET orders = s.orders + 1, revenue_cents = s.revenue_cents + excluded.revenue_cents;
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown projection %', projection USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

CREATE FUNCTION shop.projections() RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['order_summary', 'customer_stats', 'daily_sales']
$$;

-- Brings every read model up to date with the aggregate of event `event_id`, in version order. Returns the
-- number of (event, projection) applications, 0 when everything was applied already, or NULL when the event
-- does not exist. Raises SQLSTATE CV001 when a version is missing: an event is not visible yet, so the job waits
-- rather than apply a later event first. Waits at most a second for a lock (55P03 after that): a rebuild holds
-- the checkpoints for its whole run, and the job had better wait in the delay ladder than hold a connection.
CREATE FUNCTION shop.project_aggregate(event_id bigint) RETURNS integer LANGUAGE plpgsql AS $$
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

-- Rebuilds one read model from the event store while incremental updates go on: they wait on the checkpoint
-- table's lock for the rebuild's duration (they are not stopped, and none fails), readers keep seeing the old
-- model until the commit, and events appended meanwhile are applied by their own updates afterwards, from the
-- checkpoints the rebuild leaves. Returns the number of events replayed.
CREATE FUNCTION shop.rebuild_projection(p text) RETURNS bigint LANGUAGE plpgsql AS $$
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
