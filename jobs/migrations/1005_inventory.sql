-- Inventory, a bounded context of its own (jobs/inventory): the stock of each product, the reservation each order
-- holds, and the events of both. Orders keep the catalogue (shop.products: names and prices) and ask inventory for
-- stock through jobs only (inventory.reserve, inventory.release); no statement of one touches the other's tables.
CREATE SCHEMA inventory;

CREATE TABLE inventory.stock (
    product_id text PRIMARY KEY,
    available  integer NOT NULL CHECK (available >= 0)
);

-- One per order, whichever job of the order came first: 'reserved' (its lines hold stock), 'short' (nothing
-- taken), 'released' (its lines given back, or a release that came before any reservation: a reservation that
-- finds it takes nothing). Its version is that of its last event.
CREATE TABLE inventory.reservations (
    order_id   text PRIMARY KEY,
    status     text NOT NULL CHECK (status IN ('reserved', 'short', 'released')),
    version    integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE inventory.reservation_lines (
    order_id   text NOT NULL REFERENCES inventory.reservations,
    product_id text NOT NULL,
    quantity   integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);

-- Inventory's audit trail, append-only as shop.events is: StockReserved, StockShort, StockReleased and
-- ReservationWithdrawn, per reservation (aggregate_id is its order's id), versions gapless.
CREATE TABLE inventory.events (
    id           bigserial PRIMARY KEY,
    aggregate_id text NOT NULL,
    version      integer NOT NULL CHECK (version > 0),
    type         text NOT NULL,
    data         jsonb NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (aggregate_id, version)
);

CREATE FUNCTION inventory.refuse_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'inventory.events is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON inventory.events
    FOR EACH ROW EXECUTE FUNCTION inventory.refuse_event_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON inventory.events
    FOR EACH STATEMENT EXECUTE FUNCTION inventory.refuse_event_change();

-- The stock moves over, and every order that holds stock today gets its reservation (version 0: it has no event
-- here; its release will be version 1), so that cancelling it later gives its stock back.
INSERT INTO inventory.stock (product_id, available) SELECT id, stock FROM shop.products;
INSERT INTO inventory.reservations (order_id, status, version)
    SELECT id, 'reserved', 0 FROM shop.orders WHERE status IN ('reserved', 'paid', 'confirmed');
INSERT INTO inventory.reservation_lines (order_id, product_id, quantity)
    SELECT i.order_id, i.product_id, i.quantity
    FROM shop.order_items i JOIN inventory.reservations r ON r.order_id = i.order_id;
ALTER TABLE shop.products DROP COLUMN stock;

GRANT USAGE ON SCHEMA inventory TO conveyor_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA inventory TO conveyor_app;
REVOKE UPDATE, DELETE, TRUNCATE ON inventory.events FROM conveyor_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA inventory TO conveyor_app;
