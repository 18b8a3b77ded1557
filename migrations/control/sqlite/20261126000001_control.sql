-- The proxy's control database: the live phase of each carve-out, and the audit log of every
-- change. Shared by every proxy replica; the first replica to start seeds it from its file.

CREATE TABLE control_carveouts (
    name          TEXT PRIMARY KEY,
    phase         TEXT NOT NULL CHECK (phase IN ('monolith', 'shadow', 'canary', 'extracted', 'retired')),
    basis_points  BIGINT NOT NULL DEFAULT 0 CHECK (basis_points BETWEEN 0 AND 10000),
    version       BIGINT NOT NULL,
    updated_at    TEXT NOT NULL,
    updated_by    TEXT NOT NULL,
    reason        TEXT NOT NULL
);

CREATE TABLE control_audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    carveout     TEXT NOT NULL,
    actor        TEXT NOT NULL,
    from_phase   TEXT NOT NULL,
    to_phase     TEXT NOT NULL,
    reason       TEXT NOT NULL,
    forced       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX control_audit_carveout ON control_audit (carveout, id);
