-- Refunds and the saga's own ending. A paid or confirmed order that is cancelled goes to 'refunding' (its stock
-- released at once) and to 'refunded' once the gateway has refunded its charge. A charge captured after its order
-- was cancelled is refunded too; the order stays cancelled.
ALTER TYPE shop.order_status ADD VALUE 'refunding';
ALTER TYPE shop.order_status ADD VALUE 'refunded';

ALTER TABLE shop.payments DROP CONSTRAINT payments_status_check;
ALTER TABLE shop.payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('captured', 'declined', 'refunded'));
ALTER TABLE shop.payments
    ADD COLUMN refund_id   text,
    ADD COLUMN refunded_at timestamptz,
    ADD CONSTRAINT payments_refund_recorded CHECK ((status = 'refunded') = (refund_id IS NOT NULL));

-- The refunds of each day, apart from its revenue: a refund does not undo a sale's day, it happens on its own.
ALTER TABLE shop.daily_sales ADD COLUMN refunds integer NOT NULL DEFAULT 0,
                             ADD COLUMN refunded_cents bigint NOT NULL DEFAULT 0;

-- As 1002's, with the refund events: RefundRequested (a paid order cancelled: status refunding), PaymentRefunded
-- (money back: lowers the customer's lifetime value, counts on the day's refunds), OrderRefunded (status refunded),
-- and LatePaymentCaptured (a charge that arrived after its order was cancelled: money in, status unchanged).
CREATE OR REPLACE FUNCTION shop.apply_event(projection text, e shop.events) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    new_status text := CASE e.type
        WHEN 'OrderPlaced' THEN 'placed'
        WHEN 'StockReserved' THEN 'reserved'
        WHEN 'OrderRejected' THEN 'rejected'
        WHEN 'PaymentCaptured' THEN 'paid'
        WHEN 'OrderConfirmed' THEN 'confirmed'
        WHEN 'OrderCancelled' THEN 'cancelled'
        WHEN 'RefundRequested' THEN 'refunding'
        WHEN 'OrderRefunded' THEN 'refunded'
    END;
    sale_day date := (e.occurred_at AT TIME ZONE 'UTC')::date;
    amount bigint := (e.data->>'amount_cents')::bigint;
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
        ELSIF e.type IN ('PaymentCaptured', 'LatePaymentCaptured', 'PaymentRefunded') THEN
            INSERT INTO shop.customer_stats AS s (customer_id, currency, order_count, lifetime_value_cents)
            VALUES (e.data->>'customer_id', e.data->>'currency', 0,
                    CASE WHEN e.type = 'PaymentRefunded' THEN -amount ELSE amount END)
            ON CONFLICT (customer_id, currency)
            DO UPDATE SET lifetime_value_cents = s.lifetime_value_cents + excluded.lifetime_value_cents;
        END IF;
    ELSIF projection = 'daily_sales' THEN
        IF e.type IN ('PaymentCaptured', 'LatePaymentCaptured') THEN
            INSERT INTO shop.daily_sales AS s (day, currency, orders, revenue_cents)
            VALUES (sale_day, e.data->>'currency', 1, amount)
            ON CONFLICT (day, currency)
            DO UPDATE SET orders = s.orders + 1, revenue_cents = s.revenue_cents + excluded.revenue_cents;
        ELSIF e.type = 'PaymentRefunded' THEN
            INSERT INTO shop.daily_sales AS s (day, currency, orders, revenue_cents, refunds, refunded_cents)
            VALUES (sale_day, e.data->>'currency', 0, 0, 1, amount)
            ON CONFLICT (day, currency)
            DO UPDATE SET refunds = s.refunds + 1, refunded_cents = s.refunded_cents + excluded.refunded_cents;
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown projection %', projection USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;
