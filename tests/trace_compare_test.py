#!/usr/bin/python3
"""Tests of tests/trace_compare.py (plain unittest): the trace comparison rules of
docs/behaviour.md (simulate traces)."""

import copy
import glob
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import trace_compare  # noqa: E402
from trace_compare import compare  # noqa: E402

DATA = os.environ.get("CKPT_TEST_DATA") or os.path.join(HERE, "data")
EXAMPLES = os.path.join(DATA, "examples")


def load(name):
    with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
        return json.load(f)


def trace(name):
    return load(name)["trace"]


class SelfComparisonTest(unittest.TestCase):
    def test_every_example_trace_equals_itself(self):
        files = sorted(glob.glob(os.path.join(EXAMPLES, "*.json")))
        self.assertGreaterEqual(len(files), 18)
        for path in files:
            with self.subTest(path=os.path.basename(path)):
                with open(path, encoding="utf-8") as f:
                    case = json.load(f)
                self.assertEqual(compare(case, copy.deepcopy(case)), [])
                self.assertEqual(compare(case["trace"], case), [])
                self.assertEqual(compare(case, case, crash_final_only=True), [])
                self.assertEqual(compare(case, case, final_against=case), [])


class MutationTest(unittest.TestCase):
    def setUp(self):
        self.exp = trace("outdir_relative.json")
        self.act = copy.deepcopy(self.exp)

    def test_a_removed_file_is_reported_with_its_location(self):
        self.act["runs"][0]["events"][2]["files"].remove("ckpts/exp/epoch_1.pth")
        diffs = compare(self.exp, self.act)
        self.assertEqual(diffs, ['run 0 event 2 (after_val_epoch): files: missing ["ckpts/exp/epoch_1.pth"]'])

    def test_a_removed_final_file_and_checkpoint_are_reported(self):
        self.act["final"]["files"].remove("ckpts/exp/epoch_1.pth")
        del self.act["final"]["checkpoints"]["ckpts/exp/epoch_1.pth"]
        diffs = compare(self.exp, self.act)
        self.assertEqual(diffs, [
            'final: files: missing ["ckpts/exp/epoch_1.pth"]',
            'final: checkpoints: missing ["ckpts/exp/epoch_1.pth"]',
        ])

    def test_a_changed_hub_value_is_reported(self):
        self.act["runs"][0]["events"][2]["saves"][1]["ckpt"]["hub"]["best_score"] = 0.75
        self.act["final"]["checkpoints"]["ckpts/exp/epoch_2.pth"]["hub"]["last_ckpt"] = "x.pth"
        diffs = compare(self.exp, self.act)
        self.assertEqual(diffs, [
            "run 0 event 2 (after_val_epoch) save 1: hub.best_score: expected 0.5, got 0.75",
            'final checkpoint ckpts/exp/epoch_2.pth: hub.last_ckpt: '
            'expected "ckpts/exp/epoch_2.pth", got "x.pth"',
        ])

    def test_a_missing_info_key_is_reported_as_absent(self):
        del self.act["runs"][0]["events"][3]["info"]["best_score"]
        self.assertEqual(compare(self.exp, self.act), [
            "run 0 event 3 (after_train_epoch): info.best_score: expected 0.5, got <absent>"])

    def test_root_prefixed_and_relative_paths_are_equal(self):
        exp = trace("crash_twice.json")
        act = json.loads(json.dumps(exp).replace('"$ROOT/', '"'))
        self.assertNotEqual(json.dumps(exp), json.dumps(act))
        self.assertEqual(compare(exp, act), [])
        self.assertEqual(compare(act, exp), [])
        # The other way round too: a relative trace against a $ROOT-prefixed one.
        rel = trace("outdir_relative.json")
        rooted = json.loads(json.dumps(rel).replace('"ckpts/', '"$ROOT/ckpts/'))
        self.assertEqual(compare(rel, rooted), [])
        # A different path is still different.
        act["runs"][0]["events"][1]["last_checkpoint"] = "work_dirs/other/epoch_1.pth"
        self.assertEqual(compare(exp, act), [
            'run 0 event 1 (after_train_epoch): last_checkpoint: '
            'expected "work_dirs/exp/epoch_1.pth", got "work_dirs/other/epoch_1.pth"'])

    def test_an_extra_event_is_reported_as_extra_not_as_a_cascade(self):
        extra = copy.deepcopy(self.act["runs"][0]["events"][1])
        extra["stage"] = "after_train_iter"
        extra.pop("saves")
        self.act["runs"][0]["events"].insert(1, extra)
        self.assertEqual(compare(self.exp, self.act), [
            "run 0 actual event 1: extra event after_train_iter epoch=0 iter=2"])

    def test_a_missing_event_and_a_missing_save_are_reported(self):
        del self.act["runs"][0]["events"][3]
        self.act["runs"][0]["events"][2]["saves"].pop()
        diffs = compare(self.exp, self.act)
        self.assertEqual(diffs, [
            "run 0 event 2 (after_val_epoch): saves: expected 2 ['ckpts/exp/best_acc_epoch_1.pth', "
            "'ckpts/exp/epoch_1.pth'], got 1 ['ckpts/exp/best_acc_epoch_1.pth']",
            "run 0 event 3: missing event after_train_epoch epoch=1 iter=4",
        ])

    def test_logs_calls_and_other_unlisted_fields_are_not_compared(self):
        ev = self.act["runs"][0]["events"][1]
        ev["logs"] = [["WARNING", "something else"]]
        ev["saves"][0]["call"]["filename"] = "other.pth"
        ev["saves"][0]["ckpt"]["n_param_schedulers"] = 7
        self.act["final"]["checkpoints"]["ckpts/exp/epoch_1.pth"]["meta_keys"] = []
        self.act["mmengine"] = {"version": "none"}
        self.assertEqual(compare(self.exp, self.act), [])

    def test_keys_meta_and_published_keys_are_compared(self):
        exp = trace("publish_str_last_only.json")
        act = copy.deepcopy(exp)
        act["runs"][0]["events"][1]["saves"][0]["ckpt"]["keys"].remove("optimizer")
        act["runs"][0]["events"][2]["saves"][0]["ckpt"]["meta"]["iter"] = 5
        act["final"]["published"][0]["keys"] = ["meta", "state_dict"]
        self.assertEqual(compare(exp, act), [
            'run 0 event 1 (after_train_epoch) save 0: keys: missing ["optimizer"]',
            'run 0 event 2 (after_train_epoch) save 0: meta: expected {"epoch": 2, "iter": 4}, '
            'got {"epoch": 2, "iter": 5}',
            'final published 0: keys: extra ["meta"]',
        ])
        act = copy.deepcopy(exp)
        act["final"]["published"] = []
        self.assertEqual(compare(exp, act), ["final: published: expected 1 files, got 0"])

    def test_floats_compare_with_a_tiny_relative_tolerance_and_markers_decode(self):
        info = self.act["runs"][0]["events"][2]["info"]
        info["best_score"] = 0.5 * (1 + 1e-12)
        self.assertEqual(compare(self.exp, self.act), [])
        info["best_score"] = 0.5 * (1 + 1e-6)
        self.assertEqual(len(compare(self.exp, self.act)), 1)
        self.exp["runs"][0]["events"][2]["info"]["best_score"] = {"__float__": "nan"}
        info["best_score"] = float("nan")
        self.assertEqual(compare(self.exp, self.act), [])
        info["best_score"] = {"__float__": "inf"}
        self.assertEqual(len(compare(self.exp, self.act)), 1)
        # An int score equals the same float; a bool is not a number.
        self.exp["runs"][0]["events"][2]["info"]["best_score"] = 1
        info["best_score"] = 1.0
        self.assertEqual(compare(self.exp, self.act), [])
        info["best_score"] = True
        self.assertEqual(len(compare(self.exp, self.act)), 1)

    def test_a_different_end_is_reported(self):
        self.act["runs"][0]["end"] = "crashed"
        self.assertIn('run 0: end: expected "completed", got "crashed"', compare(self.exp, self.act))


class ErrorPhaseTest(unittest.TestCase):
    def test_same_error_phase_is_equal_and_type_and_message_are_not_compared(self):
        exp = trace("init_rule_invalid_str.json")
        act = copy.deepcopy(exp)
        act["runs"][0]["error"]["type"] = "ValueError"
        act["runs"][0]["error"]["message"] = "rule: must be 'greater', 'less' or None; got 'max'"
        self.assertEqual(compare(exp, act), [])

    def _mmengine_failed_in_train(self):
        # MMEngine ran, saved, then raised in `train` (e.g. a bad template at the first save).
        exp = trace("publish_str_last_only.json")
        run = exp["runs"][0]
        run["end"] = "error"
        run["error"] = {"phase": "train", "stage": "after_train", "type": "KeyError",
                        "message": "x"}
        return exp

    def test_failing_earlier_than_mmengine_is_accepted(self):
        exp = self._mmengine_failed_in_train()
        act = {"format": 1,
               "runs": [{"run": 0, "events": [], "end": "error",
                         "error": {"phase": "hook_init", "type": "ValueError", "message": "y"}}],
               "final": {"files": [], "checkpoints": {}, "published": []}}
        self.assertEqual(compare(exp, act), [])
        # Failing earlier still means nothing was written.
        act["final"]["files"] = ["work_dirs/exp/epoch_1.pth"]
        self.assertEqual(compare(exp, act), [
            "final (state before run 0, which failed earlier): files: "
            'extra ["work_dirs/exp/epoch_1.pth"]'])

    def test_failing_later_than_expected_is_a_difference(self):
        exp = trace("init_save_begin_negative.json")
        act = copy.deepcopy(exp)
        act["runs"][0]["error"]["phase"] = "train"
        self.assertEqual(compare(exp, act),
                         ['run 0: error.phase: expected "hook_init", got "train"'])

    def test_an_error_where_mmengine_completed_is_a_difference(self):
        exp = trace("publish_str_last_only.json")
        act = copy.deepcopy(exp)
        act["runs"][0]["end"] = "error"
        act["runs"][0]["error"] = {"phase": "hook_init", "type": "ValueError", "message": "m"}
        diffs = compare(exp, act)
        self.assertEqual(diffs[0], 'run 0: end: expected "completed", got "error" '
                                   '(phase "hook_init": "m")')


class CrashRuleTest(unittest.TestCase):
    def setUp(self):
        self.exp = trace("crash_twice.json")
        self.act = copy.deepcopy(self.exp)
        # ckptledger's run 1 differs on the way (e.g. it resumes from another checkpoint) ...
        self.act["runs"][1]["events"][1]["info"]["keep_ckpt_ids"] = [3]
        self.act["runs"][1]["events"].pop()

    def test_events_are_compared_by_default(self):
        self.assertGreater(len(compare(self.exp, self.act)), 0)

    def test_crash_final_only_compares_runs_and_final_state(self):
        self.assertEqual(compare(self.exp, self.act, crash_final_only=True), [])
        self.act["final"]["files"].append("work_dirs/exp/epoch_4.pth")
        self.assertEqual(compare(self.exp, self.act, crash_final_only=True),
                         ['final: files: extra ["work_dirs/exp/epoch_4.pth"]'])

    def test_crash_final_only_still_compares_events_of_a_scenario_without_crash(self):
        exp = trace("outdir_relative.json")
        act = copy.deepcopy(exp)
        act["runs"][0]["events"][1]["info"]["last_ckpt"] = "elsewhere.pth"
        self.assertEqual(len(compare(exp, act, crash_final_only=True)), 1)

    def test_final_state_is_held_to_the_run_without_crash(self):
        nocrash = {"format": 1, "runs": [{"run": 0, "events": [], "end": "completed"}],
                   "final": copy.deepcopy(self.exp["final"])}
        self.assertEqual(compare(self.exp, self.act, final_against=nocrash), [])
        # MMEngine's crashed final differs from the no-crash final: only the latter counts.
        nocrash["final"]["checkpoints"]["work_dirs/exp/epoch_6.pth"]["hub"]["keep_ckpt_ids"] = [6]
        self.assertEqual(compare(self.exp, self.act, final_against=nocrash), [
            "final (vs no-crash run) checkpoint work_dirs/exp/epoch_6.pth: "
            "hub.keep_ckpt_ids: expected [6], got [5, 6]"])
        # Runs are still compared with the expected (crashed) trace.
        self.act["runs"][0]["end"] = "completed"
        self.assertIn('run 0: end: expected "crashed", got "completed"',
                      compare(self.exp, self.act, final_against=nocrash))


class CliTest(unittest.TestCase):
    SCRIPT = os.path.join(HERE, "trace_compare.py")

    def run_cli(self, *args):
        return subprocess.run([sys.executable, self.SCRIPT, *args], capture_output=True,
                              text=True, check=False)

    def test_exit_status_and_report(self):
        case = os.path.join(EXAMPLES, "runner_epoch_max_keep_3.json")
        self.assertEqual(self.run_cli(case, case).returncode, 0)
        with tempfile.TemporaryDirectory() as d:
            t = trace("runner_epoch_max_keep_3.json")
            for ev in t["runs"][0]["events"]:
                ev["files"] = []
                ev["info"]["keep_ckpt_ids"] = [0]
                ev["last_checkpoint"] = "nowhere"
            bad = os.path.join(d, "bad.json")
            with open(bad, "w", encoding="utf-8") as f:
                json.dump(t, f)
            r = self.run_cli(case, bad)
            self.assertEqual(r.returncode, 1)
            lines = r.stdout.splitlines()
            self.assertIn("differs from", lines[0])
            self.assertLessEqual(len(lines), trace_compare.MAX_LINES + 2)
            self.assertTrue(lines[-1].startswith("... and "), lines[-1])
            self.assertIn("run 0 event 1 (after_train_epoch): files: missing", r.stdout)

            crash = os.path.join(EXAMPLES, "crash_after_val.json")
            self.assertEqual(self.run_cli(crash, crash, "--crash-final-only").returncode, 0)
            self.assertEqual(self.run_cli(crash, crash, "--final-against", crash).returncode, 0)
        self.assertEqual(self.run_cli(case, "/nonexistent/trace.json").returncode, 2)


if __name__ == "__main__":
    unittest.main(verbosity=1)
