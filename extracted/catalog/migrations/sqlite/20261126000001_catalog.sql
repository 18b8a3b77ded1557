-- The extracted catalog service's own schema. It differs from the monolith's catalog_products
-- on purpose, as a real extraction does: renamed columns (product_id, title, summary), the
-- price kept in mills (a tenth of a cent) with its currency beside it, and the search text in a
-- table of its own, maintained by triggers so every writer (the API, the sync relay) keeps it.

CREATE TABLE products (
    product_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    sku             TEXT NOT NULL UNIQUE,
    title           TEXT NOT NULL,
    summary         TEXT NOT NULL DEFAULT '',
    price_mills     BIGINT NOT NULL CHECK (price_mills >= 0),
    price_currency  TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE product_search (
    product_id  BIGINT PRIMARY KEY REFERENCES products (product_id) ON DELETE CASCADE,
    folded      TEXT NOT NULL
);

CREATE TRIGGER products_search_insert AFTER INSERT ON products
BEGIN
    INSERT INTO product_search (product_id, folded) VALUES (NEW.product_id, lower(NEW.title));
END;

CREATE TRIGGER products_search_update AFTER UPDATE OF title ON products
BEGIN
    UPDATE product_search SET folded = lower(NEW.title) WHERE product_id = NEW.product_id;
END;
