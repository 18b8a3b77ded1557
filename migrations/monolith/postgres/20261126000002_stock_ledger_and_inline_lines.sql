-- 1. The stock ledger: a reservation row takes its units out of stock as it is inserted, and
--    gives them back when it is marked released. The stock's CHECK (quantity >= 0) refuses an
--    oversell, so reserving is one statement, atomic for all its rows, and no code path can
--    record a reservation without taking the stock (or release it without giving it back).
CREATE FUNCTION inventory_take_stock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE inventory_stock
       SET quantity = quantity - NEW.quantity, updated_at = NEW.created_at
     WHERE product_id = NEW.product_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'inventory: no stock row for product %', NEW.product_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER inventory_reservation_takes_stock
    BEFORE INSERT ON inventory_reservations
    FOR EACH ROW EXECUTE FUNCTION inventory_take_stock();

CREATE FUNCTION inventory_return_stock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE inventory_stock
       SET quantity = quantity + OLD.quantity,
           updated_at = to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
     WHERE product_id = OLD.product_id;
    RETURN NEW;
END $$;

CREATE TRIGGER inventory_release_returns_stock
    AFTER UPDATE OF status ON inventory_reservations
    FOR EACH ROW WHEN (OLD.status = 'held' AND NEW.status = 'released')
    EXECUTE FUNCTION inventory_return_stock();

-- 2. Order lines are an immutable snapshot of the order (product, quantity, price then): they
--    are stored with it, so placing an order is one write.
ALTER TABLE orders_orders ADD COLUMN items TEXT NOT NULL DEFAULT '[]';
UPDATE orders_orders o
   SET items = (SELECT jsonb_agg(jsonb_build_object('product_id', i.product_id, 'quantity', i.quantity,
                                                    'unit_price_cents', i.unit_price_cents) ORDER BY i.product_id)::text
                  FROM orders_items i WHERE i.order_id = o.id)
 WHERE EXISTS (SELECT 1 FROM orders_items i WHERE i.order_id = o.id);
DROP TABLE orders_items;
