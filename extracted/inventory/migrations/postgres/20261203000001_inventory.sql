-- The inventory service's own schema: stock levels, reservations that expire, and the ledger of
-- every movement of stock this service made. Messages: the inbox (each command applied once)
-- and the outbox (each reply published once its effect committed).

CREATE TABLE stock_levels (
    product_id  BIGINT PRIMARY KEY,
    available   BIGINT NOT NULL CHECK (available >= 0),
    updated_at  TEXT NOT NULL
);

CREATE TABLE reservations (
    order_id     BIGINT NOT NULL,
    product_id   BIGINT NOT NULL,
    units        BIGINT NOT NULL CHECK (units > 0),
    state        TEXT NOT NULL CHECK (state IN ('held', 'committed', 'released')),
    reserved_at  TEXT NOT NULL,
    expires_at   TEXT,
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX reservations_held_expiry ON reservations (expires_at) WHERE state = 'held';
CREATE INDEX reservations_held_product ON reservations (product_id) WHERE state = 'held';

CREATE TABLE stock_movements (
    id          BIGSERIAL PRIMARY KEY,
    product_id  BIGINT NOT NULL,
    delta       BIGINT NOT NULL,
    reason      TEXT NOT NULL CHECK (reason IN ('set', 'reserve', 'release', 'expire')),
    order_id    BIGINT,
    at          TEXT NOT NULL
);

-- Orders whose release arrived: a reserve for one of them (late, or redelivered) holds nothing.
CREATE TABLE released_orders (
    order_id  BIGINT PRIMARY KEY,
    at        TEXT NOT NULL
);

CREATE TABLE inbox (
    message_id   TEXT PRIMARY KEY,
    received_at  TEXT NOT NULL
);

CREATE TABLE outbox (
    seq         BIGSERIAL PRIMARY KEY,
    message_id  TEXT NOT NULL UNIQUE,
    subject     TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
