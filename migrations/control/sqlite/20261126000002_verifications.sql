-- Contract verifications reported for each carve-out (`strangler contract verify --carveout`).
-- A carve-out that requires contracts goes to `extracted` only when its latest one is green.

CREATE TABLE control_verifications (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    carveout      TEXT NOT NULL,
    provider      TEXT NOT NULL,
    actor         TEXT NOT NULL,
    interactions  BIGINT NOT NULL CHECK (interactions >= 0),
    failures      BIGINT NOT NULL CHECK (failures >= 0),
    passed        BIGINT NOT NULL
);
CREATE INDEX control_verifications_carveout ON control_verifications (carveout, id);
