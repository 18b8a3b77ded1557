-- Replicas and what they have applied. Every change (a phase, a fence) bumps the one control
-- epoch in the transaction that makes it; each replica records, with its heartbeat, the epoch
-- it has applied, so a change is known to be in force when every live replica acknowledged it.
-- A replica whose heartbeat is older than its lease (plus a margin for clock skew) is not live:
-- it stops forwarding carve-out writes by itself once its own lease runs out.

CREATE TABLE control_epoch (
    id     BIGINT PRIMARY KEY CHECK (id = 1),
    epoch  BIGINT NOT NULL
);
INSERT INTO control_epoch (id, epoch) VALUES (1, 1);

CREATE TABLE control_replicas (
    id             TEXT PRIMARY KEY,
    address        TEXT NOT NULL,
    admin_address  TEXT NOT NULL,
    version        TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    heartbeat_ms   BIGINT NOT NULL,
    lease_ms       BIGINT NOT NULL,
    applied_epoch  BIGINT NOT NULL
);
