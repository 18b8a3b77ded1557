-- Automatic rollouts. Each replica writes what it measured of each carve-out into short
-- windows (one row per replica and flush; the controller sums every replica's); each
-- carve-out's rollout keeps its plan and progress here, so a controller that takes over
-- continues from the same step; one replica is the controller, by a lease.

CREATE TABLE control_windows (
    replica    TEXT NOT NULL,
    carveout   TEXT NOT NULL,
    at_ms      BIGINT NOT NULL,
    counts     TEXT NOT NULL,
    PRIMARY KEY (replica, carveout, at_ms)
);
CREATE INDEX control_windows_by_time ON control_windows (carveout, at_ms);

CREATE TABLE control_rollouts (
    carveout         TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    plan             TEXT NOT NULL,
    progress         TEXT NOT NULL,
    evaluated_to_ms  BIGINT NOT NULL,
    last_checks      TEXT NOT NULL,
    history          TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    -- Bumped by every write; a write names the version it read (operators and the controller
    -- never overwrite each other's changes).
    version          BIGINT NOT NULL
);

CREATE TABLE control_leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
