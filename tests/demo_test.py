#!/usr/bin/python3
"""`ckptledger demo --size small` end to end (docs/cli.md).

    demo_test.py CKPTLEDGER_BIN [unittest args]

One demo runs into a fresh work_dir (setUpClass); the tests check what it left: the files its
summary names exist, `ckptledger verify` passes on both ledgers, the killed + resumed run reached the
same best checkpoints and scores (and bitwise-equal weights) as the uninterrupted reference, the
ledger tells the story (a crashed run, then a resumed one), a second `demo` on the same work_dir
only prints the summary (no new run_started), and a demo SIGKILLed from outside at a random moment
finishes the job when run again, with the same best scores as the first demo. `demo --ranks 2`:
the killed-and-restarted torchrun job ends as the uninterrupted one, and both ledgers verify.
CKPT_DEMO_KILL_AT=SECONDS fixes the moment of the external kill (it is printed on failure).
"""

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

BIN = None
TIMEOUT_S = 300


def run_demo(work_dir, *extra):
    start = time.monotonic()
    p = subprocess.run([BIN, "demo", "--size", "small", "--work-dir", work_dir, *extra],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=TIMEOUT_S)
    return p.returncode, p.stdout, time.monotonic() - start


def load_summary(work_dir):
    with open(os.path.join(work_dir, "demo_summary.json"), encoding="utf-8") as f:
        return json.load(f)


def query(ledger, sql):
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def kinds(ledger, kind):
    return query(ledger, f"SELECT count(*) FROM events WHERE kind = '{kind}'")[0][0]


def best_of(side):
    """{metric: (score, epoch, file name)} of one side of a summary."""
    return {k: (v["score"], v["epoch"], os.path.basename(v["path"]))
            for k, v in side["best"].items()}


class DemoTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ckptledger-demo-test-")
        cls.dir = os.path.join(cls.tmp, "demo")
        cls.rc, cls.out, cls.wall = run_demo(cls.dir)
        cls.summary = load_summary(cls.dir) if os.path.exists(
            os.path.join(cls.dir, "demo_summary.json")) else None

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.assertEqual(self.rc, 0, self.out[-6000:])
        self.assertIsNotNone(self.summary, self.out[-6000:])

    def test_summary_says_resumed_equals_reference(self):
        s = self.summary
        self.assertTrue(s["ok"], s["differences"])
        self.assertEqual(s["differences"], [])
        for what, equal in s["same"].items():
            self.assertTrue(equal, what)
        self.assertEqual(best_of(s["train"]), best_of(s["reference"]))
        self.assertEqual(set(s["train"]["best"]), {"acc", "loss"})
        self.assertEqual(s["train"]["final"], s["reference"]["final"])
        self.assertEqual(s["train"]["final"]["epoch"], s["epochs"])
        self.assertEqual(s["train"]["final_weights_sha256"], s["reference"]["final_weights_sha256"])
        self.assertRegex(s["train"]["final_weights_sha256"], "^[0-9a-f]{64}$")
        # The printed comparison says the same.
        self.assertIn("bitwise equal", self.out)
        self.assertIn("Demo OK", self.out)

    def test_the_demo_killed_its_training_and_resumed_it(self):
        s = self.summary
        self.assertIsNotNone(s["kill"])
        self.assertEqual(s["kill"]["epoch"], 5)  # small: the middle of epoch 5 of 8
        runs = s["train"]["runs"]
        self.assertEqual(len(runs), 2, runs)
        self.assertEqual(runs[0]["ended"], "crashed")
        self.assertEqual(runs[1]["ended"], "finished")
        self.assertEqual(runs[1]["resume"], 1)
        self.assertTrue(runs[1]["resumed_from"].endswith(".pth"), runs[1])
        self.assertIn("SIGKILL", self.out)
        ledger = os.path.join(self.dir, "ckptledger.sqlite")
        self.assertEqual(kinds(ledger, "run_started"), 2)
        self.assertEqual(kinds(ledger, "resumed"), 1)
        self.assertEqual(kinds(ledger, "run_finished"), 1)
        ref = os.path.join(self.dir, "reference", "ckptledger.sqlite")
        self.assertEqual(kinds(ref, "run_started"), 1)
        self.assertEqual(kinds(ref, "resumed"), 0)

    def test_files_exist(self):
        t = self.summary["train"]
        for metric, b in t["best"].items():
            self.assertTrue(os.path.isfile(b["path"]), (metric, b))
            self.assertEqual(b["status"], "live")
        self.assertTrue(t["published"])
        for p in t["published"]:
            self.assertTrue(os.path.isfile(p["path"]), p)
            self.assertEqual(os.path.getsize(p["path"]), p["bytes"])
        last = os.path.join(self.dir, "last_checkpoint")
        with open(last, encoding="utf-8") as f:
            last_ckpt = f.read().strip()
        self.assertEqual(last_ckpt, t["last_checkpoint"])
        self.assertTrue(os.path.isfile(last_ckpt), last_ckpt)
        self.assertEqual(os.path.basename(last_ckpt), f"epoch_{self.summary['epochs']}.pth")
        regular = [f for f in t["files"] if f.startswith("epoch_") and "-" not in f]
        self.assertEqual(len(regular), 3, t["files"])  # max_keep_ckpts 3
        for f in t["files"]:
            self.assertTrue(os.path.isfile(os.path.join(self.dir, f)), f)

    def test_ledgers_verify(self):
        for d in (self.dir, os.path.join(self.dir, "reference")):
            p = subprocess.run([BIN, "verify", d], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S)
            self.assertEqual(p.returncode, 0, p.stdout)
            self.assertIn("hash chain intact", p.stdout)
        self.assertTrue(self.summary["train"]["verify"]["ok"])

    def test_sql_views_answer_as_printed(self):
        ledger = os.path.join(self.dir, "ckptledger.sqlite")
        best = query(ledger, "SELECT metric, score, epoch FROM best ORDER BY metric")
        self.assertEqual([(m, sc, ep) for m, sc, ep in best],
                         [(m, v["score"], v["epoch"])
                          for m, v in sorted(self.summary["train"]["best"].items())])
        runs = query(ledger, "SELECT ended FROM runs ORDER BY started_seq")
        self.assertEqual(runs, [("crashed",), ("finished",)])
        self.assertIn("sqlite3 -header -column", self.out)
        self.assertEqual(self.out.count("sqlite3 -header -column"), 3)

    def test_second_demo_only_prints_the_summary(self):
        ledgers = [os.path.join(self.dir, "ckptledger.sqlite"),
                   os.path.join(self.dir, "reference", "ckptledger.sqlite")]
        before = [query(lg, "SELECT max(seq) FROM events")[0][0] for lg in ledgers]
        rc, out, _ = run_demo(self.dir)
        self.assertEqual(rc, 0, out[-6000:])
        self.assertIn("summary only", out)
        self.assertNotIn("SIGKILL ->", out)
        after = [query(lg, "SELECT max(seq) FROM events")[0][0] for lg in ledgers]
        self.assertEqual(before, after)  # not one event: no run_started, nothing
        self.assertEqual(best_of(load_summary(self.dir)["train"]), best_of(self.summary["train"]))

    def test_killed_from_outside_then_rerun_finishes_with_the_same_best(self):
        work = os.path.join(self.tmp, "killed")
        env_at = os.environ.get("CKPT_DEMO_KILL_AT")
        at = float(env_at) if env_at else random.uniform(0.2, max(0.5, 0.9 * self.wall))
        note = f"external SIGKILL {at:.2f} s after the start (CKPT_DEMO_KILL_AT={at:.2f})"
        proc = subprocess.Popen([BIN, "demo", "--size", "small", "--work-dir", work],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(at)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        first_out = proc.communicate(timeout=TIMEOUT_S)[0]
        rc, out, _ = run_demo(work)
        self.assertEqual(rc, 0, f"{note}\nfirst run:\n{first_out[-3000:]}\nrerun:\n{out[-6000:]}")
        s = load_summary(work)
        self.assertTrue(s["ok"], (note, s["differences"]))
        self.assertEqual(best_of(s["train"]), best_of(self.summary["train"]), note)
        self.assertEqual(best_of(s["reference"]), best_of(self.summary["reference"]), note)
        self.assertEqual(s["train"]["final_weights_sha256"],
                         self.summary["train"]["final_weights_sha256"], note)
        ledger = os.path.join(work, "ckptledger.sqlite")
        self.assertEqual(kinds(ledger, "run_finished"), 1, note)
        # At most one kill was injected by the demo itself, whatever happened from outside.
        self.assertLessEqual(out.count("SIGKILL ->") + first_out.count("SIGKILL ->"), 1, note)
        for d in (work, os.path.join(work, "reference")):
            p = subprocess.run([BIN, "verify", d], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S)
            self.assertEqual(p.returncode, 0, f"{note}\n{p.stdout}")


class DemoRanksTest(unittest.TestCase):
    """`ckptledger demo --ranks 2`: two ranks under torchrun, one SIGKILLed during a save."""

    def test_a_rank_killed_during_a_save_resumes_to_the_uninterrupted_result(self):
        tmp = tempfile.mkdtemp(prefix="ckptledger-demo-ranks-test-")
        try:
            d = os.path.join(tmp, "demo")
            p = subprocess.run([BIN, "demo", "--ranks", "2", "--work-dir", d],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=TIMEOUT_S)
            self.assertEqual(p.returncode, 0, p.stdout[-6000:])
            self.assertIn("6/6 tensors bitwise equal", p.stdout)
            self.assertIn("the killed and resumed job matches the uninterrupted one", p.stdout)
            ledger = os.path.join(d, "killed", "ckptledger.sqlite")
            # The kill happened: torchrun started the group again, which resumed from the ledger.
            self.assertGreaterEqual(kinds(ledger, "run_started"), 2, p.stdout)
            self.assertEqual(kinds(ledger, "resumed"), 1, p.stdout)
            self.assertEqual(kinds(os.path.join(d, "reference", "ckptledger.sqlite"),
                                   "run_started"), 1, p.stdout)
            for w in ("killed", "reference"):
                v = subprocess.run([BIN, "verify", os.path.join(d, w)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S)
                self.assertEqual(v.returncode, 0, v.stdout)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    BIN = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
