-- 0001: the append-only event log. FROZEN: never edit a released migration; add a new one.
PRAGMA application_id = 1667985516; -- 0x636B706C 'ckpl': marks the file as a ckptledger ledger

-- Event kind names and numbers (ledger/event.h). Frozen: retire, never reuse.
CREATE TABLE event_kinds (
  id   INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE
);
INSERT INTO event_kinds (id, name) VALUES
  (1, 'run_started'), (2, 'save_begun'), (3, 'save_committed'), (4, 'save_failed'),
  (5, 'pruned'), (6, 'best_updated'), (7, 'published'), (8, 'resumed'), (9, 'recovered'),
  (10, 'run_finished'), (11, 'validated'), (12, 'config_changed');

CREATE TABLE events (
  seq       INTEGER PRIMARY KEY,          -- 1, 2, 3, ... without gaps
  run_id    TEXT    NOT NULL,             -- the writing process
  ts_us     INTEGER NOT NULL,             -- microseconds since the Unix epoch (UTC)
  kind      TEXT    NOT NULL,             -- event_kinds.name
  step      INTEGER,
  epoch     INTEGER,
  iter      INTEGER,
  path      TEXT,                         -- absolute path of the file concerned
  metric    TEXT,
  score     REAL,
  bytes     INTEGER,
  digest    TEXT,                         -- SHA-256, lowercase hex
  detail    TEXT CHECK (detail IS NULL OR json_valid(detail)),  -- typed payload (cereal JSON)
  hash      TEXT    NOT NULL              -- SHA-256(hash of seq-1 || canonical event); seq 1
                                          -- chains from 64 '0'
);

CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
BEGIN
  SELECT RAISE(ABORT, 'ckptledger: events are append-only (UPDATE refused)');
END;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
BEGIN
  SELECT RAISE(ABORT, 'ckptledger: events are append-only (DELETE refused)');
END;
