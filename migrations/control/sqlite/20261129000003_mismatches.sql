-- Shadow mismatches, kept for the whole cluster: every replica writes the mismatches it found
-- (redacted, values bounded) and counts them by field and by route, with its comparisons, so
-- `strangler mismatches` shows every replica's, grouped, with the rate, across restarts. The
-- samples are bounded per carve-out (the oldest go); the counts are totals.

CREATE TABLE control_mismatches (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    carveout    TEXT NOT NULL,
    replica     TEXT NOT NULL,
    at          TEXT NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    differences TEXT NOT NULL
);
CREATE INDEX control_mismatches_by_carveout ON control_mismatches (carveout, id);

-- kind: 'field' (a JSON pointer, status or header), 'route' (method and path), or 'total'
-- (key 'compared' or 'mismatched').
CREATE TABLE control_mismatch_counts (
    carveout  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    key       TEXT NOT NULL,
    count     BIGINT NOT NULL,
    PRIMARY KEY (carveout, kind, key)
);
