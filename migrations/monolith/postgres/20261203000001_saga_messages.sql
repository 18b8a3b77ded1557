-- The orders saga across services.
-- 1. Reservations expire: a lost order cannot hold stock for ever (NULL: an older row, no expiry).
ALTER TABLE inventory_reservations ADD COLUMN expires_at TEXT;
CREATE INDEX inventory_reservations_expiry ON inventory_reservations (expires_at) WHERE status = 'held';

-- 2. The stock ledger's triggers leave the data sync's writes alone: those carry the final rows
--    of both tables (the stock as the other side computed it), so taking or returning stock
--    again would count it twice. The sync marks its writes in sync_applying (see the sync crate).
CREATE TABLE IF NOT EXISTS sync_applying (origin TEXT NOT NULL);
CREATE OR REPLACE FUNCTION inventory_take_stock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM sync_applying) THEN
        RETURN NEW;
    END IF;
    UPDATE inventory_stock
       SET quantity = quantity - NEW.quantity, updated_at = NEW.created_at
     WHERE product_id = NEW.product_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'inventory: no stock row for product %', NEW.product_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION inventory_return_stock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM sync_applying) THEN
        RETURN NEW;
    END IF;
    UPDATE inventory_stock
       SET quantity = quantity + OLD.quantity,
           updated_at = to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
     WHERE product_id = OLD.product_id;
    RETURN NEW;
END $$;

-- 3. The saga's step of a pending order (reserving, charging, committing) and the card token it
--    charges when the reservation is confirmed (cleared once the order settles).
ALTER TABLE orders_orders ADD COLUMN saga_step TEXT;
ALTER TABLE orders_orders ADD COLUMN card_token TEXT;

-- 4. The transactional outbox (commands to the inventory, staged with the order's change) and
--    the inbox (each reply applied once).
CREATE TABLE orders_outbox (
    seq         BIGSERIAL PRIMARY KEY,
    message_id  TEXT NOT NULL UNIQUE,
    subject     TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE orders_inbox (
    message_id   TEXT PRIMARY KEY,
    received_at  TEXT NOT NULL
);

-- 5. Compensations of a charge: voided (a timed-out charge the provider may have taken) and
--    refunded (an approved charge whose reservation expired first).
ALTER TABLE payments_payments ADD COLUMN voided_at TEXT;
ALTER TABLE payments_payments ADD COLUMN refunded_at TEXT;
