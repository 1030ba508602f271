-- 0004: snapshots of folded state (derived data, a cache): NOT part of the hash chain, never read by
-- the catalog's views. A row is trusted only while `hash` equals the hash of event `seq` (a ledger
-- restored from a copy or rewritten ignores snapshots that are not a prefix of its chain); the
-- table may be emptied at any time without loss: readers then replay every event.
--   seq:    the last event folded into `state`
--   hash:   events.hash of that event when the snapshot was written
--   format: what wrote `state` and how (a reader ignores formats it does not know)
--   state:  opaque bytes
CREATE TABLE snapshots (
  seq    INTEGER PRIMARY KEY,
  hash   TEXT NOT NULL,
  format TEXT NOT NULL,
  state  BLOB NOT NULL
);
