-- An idempotency key names the order its request recorded (set in the same transaction as the
-- order), so a key whose request ended without a response (a crash) can be completed from the
-- order once recovery settles it, and a key whose request recorded nothing can be released.
ALTER TABLE orders_idempotency ADD COLUMN order_id BIGINT;
CREATE INDEX orders_idempotency_order ON orders_idempotency (order_id);
