#!/usr/bin/python3
"""Relocatable work_dirs: a work_dir copied (`cp -a`) or moved (`mv`) as a whole is its own run.

    relocate_test.py BUILD_BIN_DIR [unittest args]

BUILD_BIN_DIR holds `ckptledger` and `ckptledger-train`. Paths in the ledger are recorded absolute;
a ledger at its default place (`<dir>/ckptledger.sqlite`) whose runs recorded another work_dir reads
every path under that work_dir re-rooted into its present directory (Ledger::reroot,
docs/ledger-format.md). Each test trains a real job (`ckptledger train`, interval 20, by_epoch
false, max_keep_ckpts 2, save_best "acc", so that regular, pruned and best checkpoints exist) in
an original directory A, then:

- a copy B of A: `latest`, `best`, `state`, `history` and `show` on B print, in JSON and in their
  tables, only paths under B, none under A (the one exception: a `run_started` event's detail,
  which records where that run was); `verify B` hashes B's files, not A's: a byte flipped in A's
  newest checkpoint leaves `verify B` at 0, one flipped in B's makes it exit 1 naming B's file,
  while `verify A` still passes;
- `gc --apply` on a copy B whose leftovers (a pruned checkpoint back on disk) are also in A, and
  whose `last_checkpoint` still names A's file: it removes B's leftover, rewrites B's
  `last_checkpoint` to name B's file, and A keeps every file with the same bytes and mtime (and
  gains none);
- A moved to C: training C again with more iterations resumes from C's own checkpoint (the new
  `resumed` event, read from the ledger with sqlite3 read-only, names a file under C), finishes,
  leaves its final checkpoint under C, `verify C` passes, and nothing recreates A;
- a copy B trained further: B resumes from B's checkpoint, and A (every file's SHA-256 and mtime,
  and its file list) stays as it was, although B's rotation prunes the files it copied.

Standard library only; every directory is a tempfile one, removed at the end.
"""

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unittest

BIN_DIR = None
CK = None
LEDGER = "ckptledger.sqlite"
CONFIG = {"interval": 20, "by_epoch": False, "max_keep_ckpts": 2, "save_best": "acc"}
ITERS = 100  # saves at 20, 40, 60, 80, 100: iter_20..60 pruned, a best file
MORE_ITERS = 160  # a resumed run: three more saves, rotation prunes the copied files


def take_bin_dir():
    global BIN_DIR, CK
    if len(sys.argv) < 2:
        sys.exit("usage: relocate_test.py BUILD_BIN_DIR [unittest args]")
    BIN_DIR = os.path.abspath(sys.argv.pop(1))
    CK = os.path.join(BIN_DIR, "ckptledger")
    for exe in (CK, os.path.join(BIN_DIR, "ckptledger-train")):
        if not os.access(exe, os.X_OK):
            sys.exit("relocate_test.py: %s is missing" % exe)


def ck(*args):
    """`ckptledger ARGS`: (exit status, stdout, stderr)."""
    p = subprocess.run([CK] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=120)
    return p.returncode, p.stdout, p.stderr


def ck_json(test, *args):
    rc, out, err = ck(*(list(args) + ["--json"]))
    test.assertEqual(rc, 0, "ckptledger %s --json exited %d: %s" %
                     (" ".join(map(str, args)), rc, err))
    return json.loads(out), out


def under(path, root):
    return path == root or path.startswith(root + "/")


def strings(obj):
    """Every string in a parsed JSON value (keys included)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)


def snapshot(root):
    """{relative path: (size, sha256, mtime_ns)} of every file below root (and each directory's
    mtime): what a process that writes into root would change."""
    out = {}
    for d, dirs, files in os.walk(root):
        st = os.lstat(d)
        out[os.path.relpath(d, root) + "/"] = ("dir", st.st_mtime_ns)
        for name in files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            with open(p, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, root)] = (st.st_size, digest, st.st_mtime_ns)
    return out


def flip_byte(path, offset=None):
    """Flips one byte in the middle of path (size unchanged); returns a function that puts the
    bytes and the mtime back."""
    st = os.stat(path)
    with open(path, "rb") as f:
        data = f.read()
    at = len(data) // 2 if offset is None else offset
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(bytes([data[at] ^ 0xFF]))

    def restore():
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return restore


def newest_event(work_dir, kind):
    """The newest event of `kind` as `ckptledger history` gives it (paths as they are now: a moved
    work_dir's rows keep the form a file was first recorded under, the catalog re-roots them):
    {seq, path, detail} or None."""
    rc, out, err = ck("history", work_dir, "--kind", kind, "--limit", "1", "--json")
    if rc == 8:
        return None
    if rc != 0:
        raise AssertionError("ckptledger history %s exited %d: %s" % (work_dir, rc, err))
    rows = json.loads(out)
    if not rows:
        return None
    row = rows[-1]
    return {"seq": row["seq"], "path": row.get("path"), "detail": row.get("detail")}


class RelocateTestBase(unittest.TestCase):
    def setUp(self):
        # Real paths: the ledger records absolute, resolved paths; /tmp may be a link.
        self.tmp = os.path.realpath(tempfile.mkdtemp(prefix="ckpt-relocate-"))
        self.config = os.path.join(self.tmp, "hook.json")
        with open(self.config, "w") as f:
            json.dump(CONFIG, f)
        # Neither name is a prefix of the other.
        self.a = os.path.join(self.tmp, "orig")
        self.b = os.path.join(self.tmp, "copy")
        self.c = os.path.join(self.tmp, "moved")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def train(self, work_dir, iters):
        cmd = [CK, "train", "--work-dir", work_dir, "--config", self.config, "--iters",
               str(iters), "--seed", "1"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        self.assertEqual(p.returncode, 0, "%s exited %d:\n%s" %
                         (" ".join(cmd), p.returncode, p.stderr[-4000:]))
        return p

    def train_original(self):
        self.train(self.a, ITERS)
        self.assertTrue(os.path.exists(os.path.join(self.a, "iter_%d.pth" % ITERS)))

    def copy(self, src, dst):
        subprocess.run(["cp", "-a", src, dst], check=True)

    def assert_only_paths_under(self, obj, root, other, what, allow=lambda s: False):
        """Every absolute path among obj's strings lies under root, and no string names other;
        at least one path under root (the check is not vacuous). Lists every offender."""
        bad, seen = [], 0
        for s in strings(obj):
            if allow(s):
                continue
            if other + "/" in s or s == other or s.endswith(" " + other):
                bad.append(s)
            elif s.startswith("/"):
                if under(s, root):
                    seen += 1
                else:
                    bad.append(s)
        self.assertEqual(bad, [], "%s prints paths outside %s (the original is %s)" %
                         (what, root, other))
        self.assertGreater(seen, 0, "%s printed no path at all: %r" % (what, obj))


class CopiedWorkDir(RelocateTestBase):
    def test_copied_work_dir_cli_reports_and_verifies_only_its_own_files(self):
        a, b = self.a, self.b
        self.train_original()
        self.copy(a, b)

        latest, _ = ck_json(self, "latest", b)
        self.assertEqual(latest["path"], os.path.join(b, "iter_%d.pth" % ITERS), latest)
        self.assert_only_paths_under(latest, b, a, "latest --json")

        best, _ = ck_json(self, "best", b)
        self.assertTrue(best, "no best checkpoint: the job validated nothing?")
        self.assert_only_paths_under(best, b, a, "best --json")
        for row in best:
            self.assertTrue(os.path.exists(row["path"]), row)

        state, _ = ck_json(self, "state", b)
        self.assert_only_paths_under(state, b, a, "state --json")
        self.assertEqual(state["last_ckpt"], latest["path"], state)
        self.assertTrue(state["live"], state)

        history, _ = ck_json(self, "history", b)
        # A run_started event records where its run was: the one place A may appear.
        # Its summary line says the same ("..., out_dir /.../orig").
        recorded = []
        for e in history:
            if e["kind"] == "run_started" and isinstance(e.get("detail"), dict):
                for key in ("work_dir", "out_dir"):
                    if key in e["detail"]:
                        recorded.append(e["detail"].pop(key))
                e.pop("summary", None)
        self.assertIn(a, recorded, "run_started does not record the original work_dir")
        self.assertTrue(any(e["kind"] == "pruned" for e in history), "nothing was pruned")
        with self.subTest("history --json"):
            self.assert_only_paths_under(history, b, a, "history --json")

        for target in (latest["path"], best[0]["path"]):
            shown, _ = ck_json(self, "show", target, b)
            with self.subTest("show --json", path=target):
                self.assert_only_paths_under(shown, b, a, "show %s --json" % target)
            self.assertEqual(shown["path"], target, shown)
            self.assertTrue(shown["checkpoints"], shown)
            self.assertTrue(shown["on_disk"]["exists"], shown)
            self.assertTrue(shown["on_disk"]["matches_ledger"], shown)

        # The tables (paths relative to the work_dir, or absolute when outside it).
        for verb in (["latest", b], ["best", b], ["state", b], ["history", b],
                     ["show", latest["path"], b]):
            rc, out, err = ck(*verb)
            self.assertEqual(rc, 0, "%s: %s" % (verb, err))
            self.assertNotIn(a + "/", out, "ckptledger %s prints the original's paths:\n%s"
                             % (" ".join(verb), out))

        # verify B reads B's files, not A's.
        name = os.path.basename(latest["path"])
        restore = flip_byte(os.path.join(a, name))
        try:
            rc, out, err = ck("verify", b)
            self.assertEqual(rc, 0, "verify of the copy fails after a byte of the ORIGINAL's %s "
                             "changed (it hashes the original's files):\n%s%s" % (name, out, err))
            rc, out, _ = ck("verify", a, "--json")
            self.assertEqual(rc, 1, "verify of the original misses its own damaged file: " + out)
        finally:
            restore()
        rc, out, err = ck("verify", a)
        self.assertEqual(rc, 0, out + err)

        restore = flip_byte(os.path.join(b, name))
        try:
            rc, out, err = ck("verify", b, "--json")
            self.assertEqual(rc, 1, "verify of the copy misses a byte flipped in the copy's %s:"
                             "\n%s%s" % (name, out, err))
            report = json.loads(out)
            self.assertFalse(report["ok"], report)
            self.assertTrue(report["chain_ok"], report)
            self.assertEqual([(p["path"], p["problem"]) for p in report["file_problems"]],
                             [(os.path.join(b, name), "sha256 differs")], report)
            rc, out, err = ck("verify", b)
            self.assertEqual(rc, 1, out + err)
            self.assertIn(name, out + err)
            self.assertNotIn(a + "/", out + err)
            rc, out, err = ck("verify", a)
            self.assertEqual(rc, 0, "the original fails verify after the COPY's file changed:\n"
                             + out + err)
        finally:
            restore()
        rc, out, err = ck("verify", b)
        self.assertEqual(rc, 0, out + err)

    def test_gc_apply_on_a_copy_writes_only_inside_the_copy(self):
        a, b = self.a, self.b
        self.train_original()
        last_a = os.path.join(a, "iter_%d.pth" % ITERS)
        with open(os.path.join(a, "last_checkpoint")) as f:
            self.assertEqual(f.read().strip(), last_a)
        # A pruned checkpoint back on disk (a prune a crash did not finish): reconciliation
        # removes it. It is in A, so in the copy too.
        pruned = "iter_20.pth"
        self.assertFalse(os.path.exists(os.path.join(a, pruned)), "iter_20.pth was not pruned")
        with open(os.path.join(a, pruned), "wb") as f:
            f.write(b"a pruned checkpoint back on disk")
        rc, out, err = ck("gc", a)
        self.assertEqual(rc, 1, "gc on the original sees nothing to do:\n" + out + err)
        self.copy(a, b)
        before = snapshot(a)

        rc, out, err = ck("gc", b, "--json")
        self.assertEqual(rc, 1, "gc dry run on the copy sees nothing to do:\n" + out + err)
        plan = json.loads(out)
        self.assert_only_paths_under(plan, b, a, "gc --json (dry run)",
                                     allow=lambda s: s.startswith("named '"))
        findings = {(f["finding"], f["path"]) for f in plan["findings"]}
        self.assertIn(("prune_completed", os.path.join(b, pruned)), findings, plan)
        self.assertIn(("stale_last_checkpoint", os.path.join(b, "last_checkpoint")), findings,
                      plan)
        self.assertEqual(plan["ledger_behind_work_dir"], [], plan)
        self.assertEqual(snapshot(a), before, "gc's dry run on the copy changed the original")

        rc, out, err = ck("gc", b, "--apply")
        self.assertEqual(rc, 0, "gc --apply on the copy exited %d:\n%s%s" % (rc, out, err))

        after = snapshot(a)
        self.assertEqual(sorted(after), sorted(before),
                         "gc --apply on the copy added or removed files in the original")
        for rel, was in before.items():
            self.assertEqual(after[rel], was, "gc --apply on the copy changed the original's %s"
                             % rel)
        self.assertTrue(os.path.exists(os.path.join(a, pruned)))
        self.assertFalse(os.path.exists(os.path.join(b, pruned)),
                         "gc --apply on the copy left the copy's leftover")
        with open(os.path.join(b, "last_checkpoint")) as f:
            last_b = f.read().strip()
        self.assertEqual(last_b, os.path.join(b, "iter_%d.pth" % ITERS),
                         "the copy's last_checkpoint does not name the copy's own file")

        # The copy is reconciled: nothing left to do, every live file of B verifies.
        rc, out, err = ck("gc", b)
        self.assertEqual(rc, 0, "gc on the copy after --apply:\n" + out + err)
        rc, out, err = ck("verify", b)
        self.assertEqual(rc, 0, out + err)
        recovered = newest_event(b, "recovered")
        self.assertIsNotNone(recovered, "gc --apply recorded nothing in the copy's ledger")
        self.assertTrue(under(recovered["path"], b), recovered)
        # The original's leftover is still the original's to reconcile.
        rc, out, err = ck("gc", a)
        self.assertEqual(rc, 1, out + err)
        self.assertEqual(snapshot(a), before)


class NotRelocated(RelocateTestBase):
    def test_a_ledger_backed_up_alone_still_names_the_original_files(self):
        """A ledger copied without its files (sqlite3 .backup into a directory of its own, under the
        default name) is a backup of the original's history, not a moved work_dir: its verbs name
        and verify the original's files."""
        self.train_original()
        backup = os.path.join(self.tmp, "backup")
        os.mkdir(backup)
        con = sqlite3.connect(os.path.join(self.a, LEDGER))
        dst = sqlite3.connect(os.path.join(backup, LEDGER))
        con.backup(dst)
        dst.close()
        con.close()
        latest, _ = ck_json(self, "latest", backup)
        self.assertEqual(latest["path"], os.path.join(self.a, "iter_%d.pth" % ITERS), latest)
        rc, out, err = ck("verify", backup)
        self.assertEqual(rc, 0, out + err)

    def test_a_work_dir_moved_into_its_own_subdirectory_is_not_rerooted_twice(self):
        """Moved into a subdirectory of itself, every recorded path is under both the old and the
        new root: no move is inferred, so no path is doubled (x/old/old/...)."""
        self.train_original()
        sub = os.path.join(self.a, "old")
        os.mkdir(sub)
        for name in os.listdir(self.a):
            if name != "old":
                os.rename(os.path.join(self.a, name), os.path.join(sub, name))
        rc, out, err = ck("history", sub, "--json")
        self.assertEqual(rc, 0, err)
        self.assertNotIn("/old/old/", out)


class ResumedAfterRelocation(RelocateTestBase):
    def test_moved_work_dir_resumes_from_its_own_files(self):
        a, c = self.a, self.c
        self.train(a, 60)
        os.rename(a, c)

        p = self.train(c, ITERS)
        self.assertIn("resumed at", p.stderr)
        resumed = newest_event(c, "resumed")
        self.assertIsNotNone(resumed, "the moved run did not resume:\n" + p.stderr)
        self.assertEqual(resumed["path"], os.path.join(c, "iter_60.pth"), resumed)
        started = newest_event(c, "run_started")
        self.assertEqual(started["detail"]["work_dir"], c, started)
        final = os.path.join(c, "iter_%d.pth" % ITERS)
        self.assertTrue(os.path.exists(final), os.listdir(c))
        with open(os.path.join(c, "last_checkpoint")) as f:
            self.assertEqual(f.read().strip(), final)
        latest, _ = ck_json(self, "latest", c)
        self.assertEqual(latest["path"], final, latest)
        self.assertFalse(os.path.exists(a),
                         "training the moved directory recreated the old one: %s" %
                         (os.listdir(a) if os.path.isdir(a) else a))
        rc, out, err = ck("verify", c)
        self.assertEqual(rc, 0, out + err)

    def test_copy_resumes_while_the_original_stays_untouched(self):
        a, b = self.a, self.b
        self.train_original()
        self.copy(a, b)
        before = snapshot(a)

        p = self.train(b, MORE_ITERS)
        self.assertIn("resumed at", p.stderr)

        after = snapshot(a)
        self.assertEqual(sorted(after), sorted(before),
                         "training the copy added or removed files in the original")
        for rel, was in before.items():
            self.assertEqual(after[rel], was, "training the copy changed the original's %s" % rel)

        resumed = newest_event(b, "resumed")
        self.assertIsNotNone(resumed, "the copy did not resume:\n" + p.stderr)
        self.assertEqual(resumed["path"], os.path.join(b, "iter_%d.pth" % ITERS), resumed)
        final = os.path.join(b, "iter_%d.pth" % MORE_ITERS)
        self.assertTrue(os.path.exists(final), os.listdir(b))
        # B's rotation pruned the files it copied from A, in B only.
        self.assertFalse(os.path.exists(os.path.join(b, "iter_%d.pth" % ITERS)))
        self.assertTrue(os.path.exists(os.path.join(a, "iter_%d.pth" % ITERS)))
        rc, out, err = ck("verify", a)
        self.assertEqual(rc, 0, out + err)
        rc, out, err = ck("verify", b)
        self.assertEqual(rc, 0, out + err)


if __name__ == "__main__":
    take_bin_dir()
    unittest.main()
