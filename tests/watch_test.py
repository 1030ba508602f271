#!/usr/bin/python3
"""`ckptledger watch` (docs/serve.md#watch), black-box, against a real training process.

    watch_test.py BUILD_BIN_DIR [unittest args]

BUILD_BIN_DIR holds `ckptledger` and `ckptledger-train`. The main test starts `watch --json` on an
empty work_dir (the ledger does not exist yet: watch waits for it), starts a slowed-down training,
SIGKILLs the training after watch printed some `save_committed` lines, restarts it (it resumes),
SIGKILLs watch midway and restarts it with `--since <last seq it printed>`, and lets the training
finish: the seqs printed by the two watch processes, concatenated, are the ledger's (`history
--json`), in order, no gap, no repeat, and each line is the `history --json` element. Beside it, an
uninterrupted `watch --json --until-finished` (followed across the crash, exits 0 at the end) and a
`--kind save_committed,best_updated` one. On a finished ledger: `--kind`, `--since`,
`--until-finished`, the text mode (one line per event), the ledger file as argument, SIGTERM and
SIGINT (exit 0), `--since abc` and `--kind nope` (exit 2), a missing directory (exit 3).
Standard library only; every child runs in its own process group, killed in tearDown.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "python"))
from live_fixtures import (Child, ckptledger, cli_json, take_bin_dir,  # noqa: E402
                           train_cmd, wall_time)


def parse_lines(test, lines):
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError as e:
            test.fail("watch --json printed a line that is not JSON (%s): %r" % (e, line))
        test.assertIsInstance(out[-1], dict, line)
    return out


class WatchTestBase(unittest.TestCase):
    def setUp(self):
        self.children = []
        self.tmp = tempfile.mkdtemp(prefix="ckpt-watch-")

    def tearDown(self):
        for c in self.children:
            c.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def spawn(self, cmd, read_stdout=True):
        return Child(cmd, self.children, read_stdout)

    def watch(self, *args):
        return self.spawn([ckptledger(), "watch"] + list(args))

    def assert_contiguous(self, seqs, what):
        self.assertEqual(len(seqs), len(set(seqs)), "%s: repeated seqs %s" % (what, seqs))
        for a, b in zip(seqs, seqs[1:]):
            self.assertEqual(b, a + 1, "%s: seq %d follows %d (gap or disorder): %s" %
                             (what, b, a, seqs))


class FollowsATrainingRun(WatchTestBase):
    def test_seqs_equal_the_ledger_across_writer_sigkill_resume_and_watch_restart_with_since(self):
        work = os.path.join(self.tmp, "work")
        os.mkdir(work)
        ledger = os.path.join(work, "ckptledger.sqlite")
        # Started before the ledger exists: they wait for it.
        w1 = self.watch(work, "--json")
        full = self.watch(work, "--json", "--until-finished")
        kinds = self.watch(work, "--json", "--kind", "save_committed,best_updated",
                           "--until-finished")
        time.sleep(1.0)
        for w in (w1, full, kinds):
            self.assertIsNone(w.p.poll(), "watch exited on a work_dir without a ledger yet: %s"
                              % w.stderr())
        self.assertFalse(os.path.exists(ledger))

        t1 = self.spawn(train_cmd(work, slow=True), read_stdout=False)

        def saves(lines, run_id=None):
            n = 0
            for line in lines:
                e = json.loads(line)
                if e.get("kind") == "save_committed" and (run_id is None or e["run_id"] != run_id):
                    n += 1
            return n

        w1.wait_for(lambda lines: saves(lines) >= 2, 60, "2 save_committed lines from watch")
        self.assertIsNone(t1.p.poll(), "the training finished before the kill (too fast): %s"
                          % t1.stderr())
        t1.killpg(signal.SIGKILL)
        self.assertEqual(t1.finish(10), -signal.SIGKILL)
        first = parse_lines(self, w1.snapshot())
        run1 = first[0]["run_id"]
        self.assertTrue(all(e["run_id"] == run1 for e in first), first)
        self.assertFalse(any(e["kind"] == "run_finished" for e in first),
                         "the killed run finished before the kill")

        # The writer is dead, its run unfinished: --until-finished goes on waiting.
        time.sleep(1.5)
        self.assertIsNone(full.p.poll(), "--until-finished exited after a crash: %s" %
                          full.stderr())
        self.assertIsNone(kinds.p.poll(), "--until-finished exited after a crash: %s" %
                          kinds.stderr())

        t2 = self.spawn(train_cmd(work, slow=True), read_stdout=False)  # resumes from the ledger
        # The same watch process follows the writer's restart: a save of the second run.
        w1.wait_for(lambda lines: saves(lines, run_id=run1) >= 1, 60,
                    "a save_committed of the resumed run, printed by the first watch")
        self.assertIsNone(t2.p.poll(), "the resumed training finished before watch was "
                          "restarted (too fast): %s" % t2.stderr())
        w1.killpg(signal.SIGKILL)
        w1.finish(10)
        lines1 = w1.snapshot()  # the complete lines: what this consumer handled
        last = json.loads(lines1[-1])["seq"]
        w2 = self.watch(work, "--json", "--since", str(last), "--until-finished")

        self.assertEqual(t2.finish(120), 0, t2.stderr())
        self.assertEqual(w2.finish(30), 0, "watch --until-finished after the run finished: " +
                         w2.stderr())
        self.assertEqual(full.finish(30), 0, full.stderr())
        self.assertEqual(kinds.finish(30), 0, kinds.stderr())

        hist = cli_json("history", work)
        hist_seqs = [r["seq"] for r in hist]
        self.assert_contiguous(hist_seqs, "history --json")
        runs = [r for r in hist if r["kind"] == "run_started"]
        self.assertEqual(len(runs), 2, "two runs: killed, resumed")
        self.assertEqual(hist[-1]["kind"], "run_finished")

        restarted = parse_lines(self, lines1) + parse_lines(self, w2.snapshot())
        seqs = [e["seq"] for e in restarted]
        self.assert_contiguous(seqs, "watch, killed and restarted with --since %d" % last)
        self.assertEqual(seqs, hist_seqs, "watch + watch --since %d vs history" % last)
        for got, want in zip(restarted, hist):
            self.assertEqual(got, want, "watch line vs history --json element")

        # Printed as they commit (inotify), not at a polling period: the median delay from an
        # event's time to its line is well under the 1-second fallback's 0.5 s.
        delays = sorted(at - wall_time(e["time"]) for e, at in zip(parse_lines(self, lines1),
                                                                     w1.arrived))
        median = delays[len(delays) // 2]
        self.assertLess(median, 0.3, "median delay %.3f s from commit to line (polling?): %s" %
                        (median, ["%.3f" % d for d in delays]))
        self.assertLess(delays[-1], 2.0, "a line came %.3f s after its commit" % delays[-1])

        whole = parse_lines(self, full.snapshot())
        self.assertEqual([e["seq"] for e in whole], hist_seqs, "watch --until-finished vs history")
        self.assertEqual(whole, hist)

        wanted = [r for r in hist if r["kind"] in ("save_committed", "best_updated")]
        self.assertTrue(any(r["kind"] == "best_updated" for r in wanted))
        self.assertEqual(parse_lines(self, kinds.snapshot()), wanted,
                         "watch --kind save_committed,best_updated vs history")


class OnAFinishedLedger(WatchTestBase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="ckpt-watch-done-")
        cls.work = os.path.join(cls.dir, "work")
        p = subprocess.run(train_cmd(cls.work, iters=80, seed=1),
                           capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            shutil.rmtree(cls.dir, ignore_errors=True)
            raise AssertionError("train exited %d: %s" % (p.returncode, p.stderr[-3000:]))
        cls.hist = cli_json("history", cls.work)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def run_watch(self, *args, timeout=30):
        w = self.watch(*args)
        rc = w.finish(timeout)
        return rc, w

    def test_until_finished_prints_every_event_then_exits_0(self):
        rc, w = self.run_watch(self.work, "--json", "--until-finished")
        self.assertEqual(rc, 0, w.stderr())
        self.assertEqual(parse_lines(self, w.snapshot()), self.hist)

    def test_ledger_file_argument_follows_the_same_ledger(self):
        rc, w = self.run_watch(os.path.join(self.work, "ckptledger.sqlite"), "--json",
                               "--until-finished")
        self.assertEqual(rc, 0, w.stderr())
        self.assertEqual(parse_lines(self, w.snapshot()), self.hist)

    def test_kind_repeated_prints_only_those_kinds(self):
        rc, w = self.run_watch(self.work, "--json", "--kind", "save_committed", "--kind",
                               "best_updated", "--until-finished")
        self.assertEqual(rc, 0, w.stderr())
        want = [r for r in self.hist if r["kind"] in ("save_committed", "best_updated")]
        self.assertTrue(any(r["kind"] == "save_committed" for r in want))
        self.assertTrue(any(r["kind"] == "best_updated" for r in want))
        self.assertEqual(parse_lines(self, w.snapshot()), want)
        self.assertEqual(want, cli_json("history", self.work, "--kind",
                                        "save_committed,best_updated"))

    def test_since_starts_after_the_cursor(self):
        n = len(self.hist) // 2
        rc, w = self.run_watch(self.work, "--json", "--since", str(n), "--until-finished")
        self.assertEqual(rc, 0, w.stderr())
        self.assertEqual(parse_lines(self, w.snapshot()), [r for r in self.hist if r["seq"] > n])
        last = self.hist[-1]["seq"]
        rc, w = self.run_watch(self.work, "--json", "--since", str(last), "--until-finished")
        self.assertEqual(rc, 0, w.stderr())
        self.assertEqual(w.snapshot(), [], "--since the last seq prints nothing")

    def test_text_mode_prints_one_line_per_event(self):
        rc, w = self.run_watch(self.work, "--until-finished")
        self.assertEqual(rc, 0, w.stderr())
        lines = w.snapshot()
        self.assertEqual(len(lines), len(self.hist), "one line per event:\n" + "\n".join(lines))
        for line, row in zip(lines, self.hist):
            fields = line.split()
            self.assertTrue(fields, "an empty line")
            self.assertEqual(fields[0], str(row["seq"]), line)
            self.assertIn(row["kind"], fields, line)
            self.assertIn(row["time"], fields, line)

    def test_sigterm_and_sigint_end_it_with_0(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            w = self.watch(self.work, "--json")
            w.wait_for(lambda lines: len(lines) >= len(self.hist), 30, "every event")
            time.sleep(0.3)
            self.assertIsNone(w.p.poll(), "watch without --until-finished exited by itself")
            w.p.send_signal(sig)
            self.assertEqual(w.finish(10), 0, "after %s: %s" % (sig.name, w.stderr()))
            self.assertEqual(parse_lines(self, w.snapshot()), self.hist)

    def test_malformed_since_is_a_usage_error_exit_2(self):
        rc, w = self.run_watch(self.work, "--json", "--since", "abc")
        self.assertEqual(rc, 2, w.stderr())
        self.assertIn("--since", w.stderr())
        self.assertEqual(w.snapshot(), [])

    def test_unknown_kind_is_a_usage_error_exit_2(self):
        rc, w = self.run_watch(self.work, "--json", "--kind", "nope")
        self.assertEqual(rc, 2, w.stderr())
        self.assertIn("ckptledger: usage error", w.stderr())

    def test_a_foreign_ledger_exits_4(self):
        bad = os.path.join(self.tmp, "bad")
        os.mkdir(bad)
        with open(os.path.join(bad, "ckptledger.sqlite"), "wb") as f:
            f.write(os.urandom(8192))  # not an SQLite database
        rc, w = self.run_watch(bad, "--json", timeout=15)
        self.assertEqual(rc, 4, w.stderr())
        self.assertIn("ckptledger: error:", w.stderr())

    def test_a_fifo_named_like_the_ledger_is_refused_at_once(self):
        odd = os.path.join(self.tmp, "fifo")
        os.mkdir(odd)
        os.mkfifo(os.path.join(odd, "ckptledger.sqlite"))
        t0 = time.monotonic()
        rc, w = self.run_watch(odd, "--json", timeout=15)
        self.assertEqual(rc, 2, w.stderr())
        self.assertIn("not a regular file", w.stderr())
        self.assertLess(time.monotonic() - t0, 3.0, "it waited for the FIFO to become a ledger")

    def test_missing_directory_exits_3(self):
        rc, w = self.run_watch(os.path.join(self.tmp, "no", "such", "dir"), "--json",
                               timeout=15)
        self.assertEqual(rc, 3, w.stderr())
        self.assertIn("ckptledger: error:", w.stderr())
        self.assertEqual(w.snapshot(), [])


def main():
    take_bin_dir("watch_test.py")
    unittest.main()


if __name__ == "__main__":
    main()
