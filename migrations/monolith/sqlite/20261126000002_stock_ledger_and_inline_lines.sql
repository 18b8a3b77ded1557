-- 1. The stock ledger: a reservation row takes its units out of stock as it is inserted, and
--    gives them back when it is marked released. The stock's CHECK (quantity >= 0) refuses an
--    oversell, so reserving is one statement, atomic for all its rows, and no code path can
--    record a reservation without taking the stock (or release it without giving it back).
CREATE TRIGGER inventory_reservation_takes_stock
BEFORE INSERT ON inventory_reservations
BEGIN
    SELECT RAISE(ABORT, 'inventory: no stock row for the product')
     WHERE NOT EXISTS (SELECT 1 FROM inventory_stock WHERE product_id = NEW.product_id);
    UPDATE inventory_stock
       SET quantity = quantity - NEW.quantity, updated_at = NEW.created_at
     WHERE product_id = NEW.product_id;
END;

CREATE TRIGGER inventory_release_returns_stock
AFTER UPDATE OF status ON inventory_reservations
WHEN OLD.status = 'held' AND NEW.status = 'released'
BEGIN
    UPDATE inventory_stock
       SET quantity = quantity + OLD.quantity,
           updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
     WHERE product_id = OLD.product_id;
END;

-- 2. Order lines are an immutable snapshot of the order (product, quantity, price then): they
--    are stored with it, so placing an order is one write.
ALTER TABLE orders_orders ADD COLUMN items TEXT NOT NULL DEFAULT '[]';
UPDATE orders_orders
   SET items = (SELECT json_group_array(json_object('product_id', i.product_id, 'quantity', i.quantity,
                                                    'unit_price_cents', i.unit_price_cents))
                  FROM (SELECT * FROM orders_items WHERE order_id = orders_orders.id ORDER BY product_id) i)
 WHERE EXISTS (SELECT 1 FROM orders_items i WHERE i.order_id = orders_orders.id);
DROP TABLE orders_items;
