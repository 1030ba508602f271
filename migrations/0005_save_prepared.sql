-- 0005: event kind 13, save_prepared (ledger/event.h). Appended when a save is about to replace an
-- existing file under its name: its bytes and SHA-256 are durable under the temp name, recorded
-- before the rename, so that a crash between the rename and the save's commit leaves a file whose
-- bytes the ledger knows (reconciliation rolls the save forward; docs/crash-safety.md). The views
-- of 0003 list files by their commits and need no change.
INSERT INTO event_kinds (id, name) VALUES (13, 'save_prepared');
