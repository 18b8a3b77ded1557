-- The orders saga across services.
-- 1. Reservations expire: a lost order cannot hold stock for ever (NULL: an older row, no expiry).
ALTER TABLE inventory_reservations ADD COLUMN expires_at TEXT;
CREATE INDEX inventory_reservations_expiry ON inventory_reservations (expires_at) WHERE status = 'held';

-- 2. The stock ledger's triggers leave the data sync's writes alone: those carry the final rows
--    of both tables (the stock as the other side computed it), so taking or returning stock
--    again would count it twice. The sync marks its writes in sync_applying (see the sync crate).
CREATE TABLE IF NOT EXISTS sync_applying (origin TEXT NOT NULL);
DROP TRIGGER inventory_reservation_takes_stock;
CREATE TRIGGER inventory_reservation_takes_stock
BEFORE INSERT ON inventory_reservations
WHEN NOT EXISTS (SELECT 1 FROM sync_applying)
BEGIN
    SELECT RAISE(ABORT, 'inventory: no stock row for the product')
     WHERE NOT EXISTS (SELECT 1 FROM inventory_stock WHERE product_id = NEW.product_id);
    UPDATE inventory_stock
       SET quantity = quantity - NEW.quantity, updated_at = NEW.created_at
     WHERE product_id = NEW.product_id;
END;
DROP TRIGGER inventory_release_returns_stock;
CREATE TRIGGER inventory_release_returns_stock
AFTER UPDATE OF status ON inventory_reservations
WHEN OLD.status = 'held' AND NEW.status = 'released' AND NOT EXISTS (SELECT 1 FROM sync_applying)
BEGIN
    UPDATE inventory_stock
       SET quantity = quantity + OLD.quantity,
           updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
     WHERE product_id = OLD.product_id;
END;

-- 3. The saga's step of a pending order (reserving, charging, committing) and the card token it
--    charges when the reservation is confirmed (cleared once the order settles).
ALTER TABLE orders_orders ADD COLUMN saga_step TEXT;
ALTER TABLE orders_orders ADD COLUMN card_token TEXT;

-- 4. The transactional outbox (commands to the inventory, staged with the order's change) and
--    the inbox (each reply applied once).
CREATE TABLE orders_outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
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
