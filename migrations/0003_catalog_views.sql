-- 0003: the catalog's views, the contract for other tools (sqlite3 CLI, Python, dashboards):
-- stable names and columns; a change is a new migration. FROZEN once released.
--
-- Times are ISO-8601 UTC text with microseconds ('2026-11-29T10:15:02.123456Z'), which sorts and
-- compares as text. Views read only `events`: a reader sees the state as of its read transaction.
--
-- A file's story: save_begun -> save_committed (or save_failed) -> at most one removal, the first
-- later event on the same path among: pruned (reason rotation / keep_trim -> 'pruned',
-- best_replaced -> 'replaced'), a new save_committed or published of the same path ('replaced',
-- reason 'overwritten'), recovered with finding lost / corrupt (status = the finding).

-- `best` finds the newest best_updated per metric by seeking this index (one seek per metric; the
-- leading `kind` makes the planner prefer it to events_by_kind). Partial: only best_updated rows.
CREATE INDEX events_best_by_metric ON events (kind, metric, seq) WHERE kind = 'best_updated';

-- One row per checkpoint file ever written (or whose write was attempted): regular and best saves,
-- published copies (a publish of content already present writes no file and has no row).
--   seq: the event the row comes from (save_committed, published, save_failed, or the save_begun of
--   a write its process never finished: status 'failed', removed_reason 'torn_save', removed_by_seq
--   the reconciliation's recovered event, the retry's save_begun, or the next run_started).
--   A recovered event with finding lost / corrupt ends a committed file (status = the finding).
CREATE VIEW checkpoints AS
SELECT
  c.path AS path,
  CASE c.kind WHEN 'published' THEN 'published'
              ELSE coalesce(nullif(json_extract(c.detail, '$.role'), ''), 'regular') END AS kind,
  c.step AS step, c.epoch AS epoch, c.iter AS iter,
  CASE WHEN r.seq IS NULL THEN 'live'
       WHEN r.kind = 'pruned' AND json_extract(r.detail, '$.reason') = 'best_replaced'
         THEN 'replaced'
       WHEN r.kind = 'pruned' THEN 'pruned'
       WHEN r.kind = 'recovered' THEN json_extract(r.detail, '$.finding')
       ELSE 'replaced' END AS status,
  c.bytes AS bytes,
  c.digest AS sha256,
  strftime('%Y-%m-%dT%H:%M:%S', c.ts_us / 1000000, 'unixepoch')
    || printf('.%06dZ', c.ts_us % 1000000) AS committed_at,
  CASE WHEN r.seq IS NOT NULL THEN strftime('%Y-%m-%dT%H:%M:%S', r.ts_us / 1000000, 'unixepoch')
    || printf('.%06dZ', r.ts_us % 1000000) END AS removed_at,
  CASE WHEN r.seq IS NULL THEN NULL
       WHEN r.kind = 'pruned' THEN json_extract(r.detail, '$.reason')
       WHEN r.kind = 'recovered' THEN json_extract(r.detail, '$.finding')
       ELSE 'overwritten' END AS removed_reason,
  r.seq AS removed_by_seq,
  c.seq AS seq,
  c.run_id AS run_id
FROM events c
LEFT JOIN events r ON r.seq = (
  SELECT min(x.seq) FROM events x
  WHERE x.path = c.path AND x.seq > c.seq
    AND (x.kind IN ('pruned', 'save_committed')
         OR (x.kind = 'published' AND NOT ifnull(json_extract(x.detail, '$.already_present'), 0))
         OR (x.kind = 'recovered'
             AND json_extract(x.detail, '$.finding') IN ('lost', 'corrupt'))))
WHERE c.kind = 'save_committed'
   OR (c.kind = 'published' AND NOT ifnull(json_extract(c.detail, '$.already_present'), 0))
UNION ALL
SELECT
  f.path,
  coalesce(nullif(json_extract(b.detail, '$.role'), ''), 'regular'),
  b.step, b.epoch, b.iter,
  'failed',
  NULL, NULL, NULL,
  strftime('%Y-%m-%dT%H:%M:%S', f.ts_us / 1000000, 'unixepoch')
    || printf('.%06dZ', f.ts_us % 1000000),
  json_extract(f.detail, '$.error'),
  f.seq,
  f.seq,
  f.run_id
FROM events f
LEFT JOIN events b ON b.seq = (
  SELECT max(y.seq) FROM events y
  WHERE y.path = f.path AND y.seq < f.seq AND y.kind = 'save_begun')
WHERE f.kind = 'save_failed'
UNION ALL
SELECT
  t.path,
  coalesce(nullif(json_extract(t.detail, '$.role'), ''), 'regular'),
  t.step, t.epoch, t.iter,
  'failed',
  NULL, NULL, NULL,
  strftime('%Y-%m-%dT%H:%M:%S', e.ts_us / 1000000, 'unixepoch')
    || printf('.%06dZ', e.ts_us % 1000000),
  'torn_save',
  e.seq,
  t.seq,
  t.run_id
FROM (
  SELECT b.*,
    (SELECT min(z.seq) FROM events z
     WHERE z.path = b.path AND z.seq > b.seq
       AND (z.kind IN ('save_committed', 'save_failed', 'save_begun')
            OR (z.kind = 'recovered' AND json_extract(z.detail, '$.finding') = 'torn_save')))
      AS outcome_seq
  FROM events b WHERE b.kind = 'save_begun'
) t
JOIN events e ON e.seq = coalesce(
  -- the write's own outcome, when it is not a commit or a failure (a retry, a recovery finding)...
  (SELECT o.seq FROM events o WHERE o.seq = t.outcome_seq
     AND o.kind IN ('save_begun', 'recovered')),
  -- ...or, without any outcome, the next process's start (the writing process is gone).
  CASE WHEN t.outcome_seq IS NULL THEN
    (SELECT min(n.seq) FROM events n WHERE n.kind = 'run_started' AND n.seq > t.seq) END);

-- The current best checkpoint per metric, as the hook's state holds it: the newest best_updated of
-- each metric since the last run that started without resume (such a run starts an empty message
-- hub, as MMEngine does; its bests replace the old ones). status: the best file's status.
CREATE VIEW best AS
WITH RECURSIVE
  metrics(m) AS (
    SELECT (SELECT min(metric) FROM events WHERE kind = 'best_updated')
    UNION ALL
    SELECT (SELECT min(metric) FROM events WHERE kind = 'best_updated' AND metric > m)
    FROM metrics WHERE m IS NOT NULL),
  newest(seq) AS (
    SELECT (SELECT max(seq) FROM events WHERE kind = 'best_updated' AND metric = m)
    FROM metrics WHERE m IS NOT NULL),
  lineage(start_seq) AS (
    SELECT ifnull(max(seq), 0) FROM events
    WHERE kind = 'run_started' AND NOT ifnull(json_extract(detail, '$.resume'), 0))
SELECT
  b.metric AS metric,
  json_extract(b.detail, '$.rule') AS rule,
  b.score AS score,
  b.path AS path,
  b.step AS step, b.epoch AS epoch, b.iter AS iter,
  strftime('%Y-%m-%dT%H:%M:%S', b.ts_us / 1000000, 'unixepoch')
    || printf('.%06dZ', b.ts_us % 1000000) AS since,
  b.seq AS seq,
  c.bytes AS bytes,
  c.digest AS sha256,
  CASE WHEN r.seq IS NULL THEN 'live'
       WHEN r.kind = 'pruned' AND json_extract(r.detail, '$.reason') = 'best_replaced'
         THEN 'replaced'
       WHEN r.kind = 'pruned' THEN 'pruned'
       WHEN r.kind = 'recovered' THEN json_extract(r.detail, '$.finding')
       ELSE 'replaced' END AS status
FROM newest
JOIN events b ON b.seq = newest.seq
LEFT JOIN events c ON c.seq = (
  SELECT max(y.seq) FROM events y
  WHERE y.path = b.path AND y.seq < b.seq AND y.kind = 'save_committed')
LEFT JOIN events r ON r.seq = (
  SELECT min(x.seq) FROM events x
  WHERE x.path = b.path AND x.seq > b.seq
    AND (x.kind IN ('pruned', 'save_committed')
         OR (x.kind = 'published' AND NOT ifnull(json_extract(x.detail, '$.already_present'), 0))
         OR (x.kind = 'recovered'
             AND json_extract(x.detail, '$.finding') IN ('lost', 'corrupt'))))
WHERE b.seq > (SELECT start_seq FROM lineage);

-- Each process that started a run (run_started) in this ledger.
--   ended: 'finished' (it appended run_finished), 'crashed' (it did not, and a later process
--   started), 'unknown' (the newest process without run_finished: still running, or died).
--   ended_at: run_finished's time, or a crashed run's last event; NULL while unknown.
CREATE VIEW runs AS
SELECT
  s.run_id AS run_id,
  strftime('%Y-%m-%dT%H:%M:%S', s.ts_us / 1000000, 'unixepoch')
    || printf('.%06dZ', s.ts_us % 1000000) AS started_at,
  CASE WHEN fin.seq IS NOT NULL THEN strftime('%Y-%m-%dT%H:%M:%S', fin.ts_us / 1000000, 'unixepoch')
         || printf('.%06dZ', fin.ts_us % 1000000)
       WHEN s.next_start IS NOT NULL THEN strftime('%Y-%m-%dT%H:%M:%S', lst.ts_us / 1000000,
         'unixepoch') || printf('.%06dZ', lst.ts_us % 1000000) END AS ended_at,
  CASE WHEN fin.seq IS NOT NULL THEN 'finished'
       WHEN s.next_start IS NOT NULL THEN 'crashed' ELSE 'unknown' END AS ended,
  json_extract(s.detail, '$.config') AS config,
  (SELECT rs.path FROM events rs WHERE rs.kind = 'resumed' AND rs.run_id = s.run_id
   ORDER BY rs.seq LIMIT 1) AS resumed_from,
  json_extract(s.detail, '$.resume') AS resume,
  json_extract(s.detail, '$.pid') AS pid,
  json_extract(s.detail, '$.host') AS host,
  json_extract(s.detail, '$.work_dir') AS work_dir,
  json_extract(s.detail, '$.out_dir') AS out_dir,
  json_extract(s.detail, '$.version') AS version,
  s.seq AS started_seq,
  lst.seq AS last_seq
FROM (
  SELECT e.*, (SELECT min(n.seq) FROM events n WHERE n.kind = 'run_started' AND n.seq > e.seq)
    AS next_start
  FROM events e WHERE e.kind = 'run_started'
) s
LEFT JOIN events fin ON fin.seq = (
  SELECT min(f.seq) FROM events f
  WHERE f.kind = 'run_finished' AND f.run_id = s.run_id AND f.seq > s.seq)
LEFT JOIN events lst ON lst.seq = (
  SELECT l.seq FROM events l
  WHERE l.seq >= s.seq AND l.seq < ifnull(s.next_start, 9223372036854775807)
    AND l.run_id = s.run_id
  ORDER BY l.seq DESC LIMIT 1);

-- The event stream, readable: one row per event, with a one-line summary of its detail.
CREATE VIEW history AS
SELECT
  seq,
  strftime('%Y-%m-%dT%H:%M:%S', ts_us / 1000000, 'unixepoch')
    || printf('.%06dZ', ts_us % 1000000) AS time,
  ts_us,
  run_id,
  kind,
  step, epoch, iter, path, metric, score,
  bytes,
  digest AS sha256,
  CASE kind
    WHEN 'run_started' THEN printf('pid %s on %s, %s, out_dir %s',
      json_extract(detail, '$.pid'), json_extract(detail, '$.host'),
      CASE WHEN json_extract(detail, '$.resume') THEN 'resume' ELSE 'fresh start' END,
      json_extract(detail, '$.out_dir'))
    WHEN 'config_changed' THEN 'changed: '
      || ifnull((SELECT group_concat(value, ', ') FROM json_each(detail, '$.changed')), '')
    WHEN 'save_begun' THEN coalesce(nullif(json_extract(detail, '$.role'), ''), 'regular')
      || ' save begun'
    WHEN 'save_committed' THEN printf('%s, %s bytes, sha256 %.12s',
      coalesce(nullif(json_extract(detail, '$.role'), ''), 'regular'), bytes, digest)
      || CASE WHEN json_extract(detail, '$.keep_tracked')
           THEN ', keep ' || json_extract(detail, '$.keep_ckpt_ids') ELSE '' END
    WHEN 'save_failed' THEN 'failed: ' || ifnull(json_extract(detail, '$.error'), '?')
    WHEN 'pruned' THEN ifnull(json_extract(detail, '$.reason'), '?')
      || CASE WHEN ifnull(json_extract(detail, '$.superseded_by'), '') != ''
           THEN ', superseded by ' || replace(json_extract(detail, '$.superseded_by'),
             rtrim(json_extract(detail, '$.superseded_by'),
                   replace(json_extract(detail, '$.superseded_by'), '/', '')), '')
           ELSE '' END
      || CASE WHEN NOT ifnull(json_extract(detail, '$.existed'), 1)
           THEN ' (the file was already gone)' ELSE '' END
    WHEN 'best_updated' THEN printf('%s = %.6g (%s; previous %s)', metric, score,
      json_extract(detail, '$.rule'),
      CASE WHEN json_extract(detail, '$.had_previous_score')
        THEN printf('%.6g', json_extract(detail, '$.previous_score')) ELSE 'none' END)
    WHEN 'published' THEN 'from ' || ifnull(json_extract(detail, '$.source'), '?')
      || ', keys ' || ifnull(json_extract(detail, '$.keys'), '[]')
      || CASE WHEN json_extract(detail, '$.already_present') THEN ' (already present)' ELSE '' END
    WHEN 'resumed' THEN 'resumed (' || ifnull(json_extract(detail, '$.source'), '?') || ')'
      || CASE WHEN ifnull(json_extract(detail, '$.rejected'), '') != ''
           THEN '; rejected: ' || json_extract(detail, '$.rejected') ELSE '' END
    WHEN 'recovered' THEN ifnull(json_extract(detail, '$.finding'), '?')
      || CASE WHEN ifnull(json_extract(detail, '$.action'), '') != ''
           THEN ': ' || json_extract(detail, '$.action') ELSE '' END
      || CASE WHEN ifnull(json_extract(detail, '$.detail'), '') != ''
           THEN ' (' || json_extract(detail, '$.detail') || ')' ELSE '' END
    WHEN 'run_finished' THEN 'training finished'
    WHEN 'validated' THEN ifnull((SELECT group_concat(key || '=' || value, ', ')
                                  FROM json_each(detail, '$.metrics')), '(no metrics)')
      || CASE WHEN ifnull(json_extract(detail, '$.auto_key'), '') != ''
           THEN '; auto -> ' || json_extract(detail, '$.auto_key') ELSE '' END
    ELSE ''
  END AS summary,
  detail
FROM events;
