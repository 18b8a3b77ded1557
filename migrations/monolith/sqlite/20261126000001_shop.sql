-- The shop's tables, one group per module; each module owns the tables that carry its prefix.
-- SQLite flavour of the same schema: INTEGER PRIMARY KEY AUTOINCREMENT in place of identities.

CREATE TABLE accounts_customers (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    email       TEXT NOT NULL CONSTRAINT accounts_customers_email_key UNIQUE,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE catalog_products (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sku          TEXT NOT NULL CONSTRAINT catalog_products_sku_key UNIQUE,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    price_cents  BIGINT NOT NULL CHECK (price_cents >= 0),
    currency     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

CREATE TABLE inventory_stock (
    product_id  BIGINT PRIMARY KEY,
    quantity    BIGINT NOT NULL CHECK (quantity >= 0),
    updated_at  TEXT NOT NULL
);

CREATE TABLE inventory_reservations (
    order_id    BIGINT NOT NULL,
    product_id  BIGINT NOT NULL,
    quantity    BIGINT NOT NULL CHECK (quantity > 0),
    status      TEXT NOT NULL CHECK (status IN ('held', 'committed', 'released')),
    created_at  TEXT NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX inventory_reservations_held ON inventory_reservations (product_id) WHERE status = 'held';

CREATE TABLE payments_payments (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id        BIGINT NOT NULL,
    amount_cents    BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('approved', 'declined', 'timed_out')),
    provider_ref    TEXT,
    decline_reason  TEXT,
    created_at      TEXT NOT NULL
);
-- At most one approved payment per order: the database refuses a double charge.
CREATE UNIQUE INDEX payments_one_approved_per_order ON payments_payments (order_id) WHERE status = 'approved';

CREATE TABLE orders_orders (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id     BIGINT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'payment_failed', 'rejected')),
    total_cents     BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    failure_reason  TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX orders_orders_customer ON orders_orders (customer_id, id);
CREATE INDEX orders_orders_pending ON orders_orders (created_at) WHERE status = 'pending';

CREATE TABLE orders_items (
    order_id          BIGINT NOT NULL REFERENCES orders_orders (id),
    product_id        BIGINT NOT NULL,
    quantity          BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_cents  BIGINT NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE orders_idempotency (
    idempotency_key  TEXT PRIMARY KEY,
    request_hash     TEXT NOT NULL,
    response_status  BIGINT,
    response_body    TEXT,
    created_at       TEXT NOT NULL
);
