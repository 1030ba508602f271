-- 0002: who holds (or last held) the writer lock, and indexes for the catalog's lookups.
CREATE TABLE writer (
  id       INTEGER PRIMARY KEY CHECK (id = 1),
  pid      INTEGER NOT NULL,
  host     TEXT    NOT NULL,
  since_us INTEGER NOT NULL,
  run_id   TEXT    NOT NULL
);

CREATE INDEX events_by_kind ON events (kind, seq);
CREATE INDEX events_by_path ON events (path, seq) WHERE path IS NOT NULL;
