-- 0006: the parts of a checkpoint written by several ranks (docs/ledger-format.md). A contract
-- for other tools, as the views of 0003: stable name and columns; a change is a new migration.
-- FROZEN once released.
--
-- A save of a job of several ranks commits one save_committed whose payload (SavePayload v2) lists
-- every part in rank order: part_paths, part_bytes, part_sha256, part_stall_us. Part 0 is the
-- event's own path (its bytes and digest are the event's); the "main" layout has that one part.
-- A save of one process (v1, no part_paths) has no row here.

-- One row per part of each committed multi-rank save.
--   seq: the save_committed; checkpoint: its path; kind: its role (regular | best);
--   status: the checkpoint's status as in `checkpoints` (a part lives and ends with its
--   checkpoint); rank: the part's index in the lists; part_path, bytes, sha256, stall_us: that
--   part's file, size, SHA-256 and its rank's training-thread stall (us).
CREATE VIEW checkpoint_parts AS
SELECT
  c.seq AS seq,
  c.path AS checkpoint,
  coalesce(nullif(json_extract(c.detail, '$.role'), ''), 'regular') AS kind,
  c.step AS step, c.epoch AS epoch, c.iter AS iter,
  CASE WHEN r.seq IS NULL THEN 'live'
       WHEN r.kind = 'pruned' AND json_extract(r.detail, '$.reason') = 'best_replaced'
         THEN 'replaced'
       WHEN r.kind = 'pruned' THEN 'pruned'
       WHEN r.kind = 'recovered' THEN json_extract(r.detail, '$.finding')
       ELSE 'replaced' END AS status,
  json_extract(c.detail, '$.layout') AS layout,
  json_extract(c.detail, '$.world_size') AS world_size,
  p.key AS rank,
  p.value AS part_path,
  json_extract(c.detail, printf('$.part_bytes[%d]', p.key)) AS bytes,
  json_extract(c.detail, printf('$.part_sha256[%d]', p.key)) AS sha256,
  json_extract(c.detail, printf('$.part_stall_us[%d]', p.key)) AS stall_us,
  c.run_id AS run_id
FROM events c
JOIN json_each(c.detail, '$.part_paths') p
LEFT JOIN events r ON r.seq = (
  SELECT min(x.seq) FROM events x
  WHERE x.path = c.path AND x.seq > c.seq
    AND (x.kind IN ('pruned', 'save_committed')
         OR (x.kind = 'published' AND NOT ifnull(json_extract(x.detail, '$.already_present'), 0))
         OR (x.kind = 'recovered'
             AND json_extract(x.detail, '$.finding') IN ('lost', 'corrupt'))))
WHERE c.kind = 'save_committed';
