-- The write fence of a cut-over: while fenced_until_ms (Unix ms) is in the future, every
-- replica holds the carve-out's writes (they wait, none fail) and lets them go when it lifts.
ALTER TABLE control_carveouts ADD COLUMN fenced_until_ms BIGINT NOT NULL DEFAULT 0;
