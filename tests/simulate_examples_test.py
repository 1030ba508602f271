#!/usr/bin/python3
"""`ckptledger simulate` against MMEngine's reference traces and our own scenarios.

    simulate_examples_test.py CKPTLEDGER_BIN EXAMPLES_DIR [unittest args]

* Every EXAMPLES_DIR/*.json case file is simulated into a fresh root and compared with its trace by
  trace_compare.compare (docs/behaviour.md, simulate traces). Crash examples are held to the
  crash outcome rule instead (docs/behaviour.md: crash outcome): the runs' `end` (and crash point)
  must match MMEngine's, the first run (no resume yet) must match MMEngine event by event, and the
  final state must equal the final state of the same scenario simulated without its crash; the
  surviving checkpoints' weights and optimizer state must be bitwise equal to the uninterrupted
  run's.
* Every tests/data/scenarios/*.json has a check below (CHECKS) asserting specific outcomes.
One subTest per file; every difference is printed.
"""

import copy
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import trace_compare  # noqa: E402

try:
    import torch  # python3-torch, for the bitwise weight checks
except ImportError:  # pragma: no cover
    torch = None

BIN = None
EXAMPLES = None
SCENARIOS = os.path.join(HERE, "data", "scenarios")
TIMEOUT_S = 300


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def scenario_of(doc):
    return doc["scenario"] if isinstance(doc, dict) and "scenario" in doc else doc


class Simulation:
    """One `ckptledger simulate` invocation in its own directory."""

    def __init__(self, tmp, name, scenario):
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        self.scenario_path = os.path.join(self.dir, "scenario.json")
        with open(self.scenario_path, "w", encoding="utf-8") as f:
            json.dump(scenario, f)
        self.root = os.path.join(self.dir, "root")
        self.trace_path = os.path.join(self.dir, "trace.json")
        p = subprocess.run([BIN, "simulate", self.scenario_path, "--root", self.root,
                            "-o", self.trace_path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=TIMEOUT_S)
        self.rc, self.stdout, self.stderr = p.returncode, p.stdout, p.stderr
        self.trace = _load(self.trace_path) if os.path.exists(self.trace_path) else None

    def describe(self):
        return f"rc={self.rc}\nstderr:\n{self.stderr[-4000:]}"

    def path(self, rel):
        return os.path.join(self.root, rel)


def without_crash(scenario):
    s = copy.deepcopy(scenario)
    s.pop("crash", None)
    s.pop("restarts", None)
    return s


def report(diffs):
    return "\n".join(diffs)


def final_checkpoint_differences(a, b):
    """Bitwise comparison of weights and optimizer state of the regular checkpoints both runs
    left: a run killed and resumed must end bitwise equal to the run without the crash."""
    if torch is None:
        return []
    out = []
    fa = (a.trace.get("final") or {}).get("checkpoints") or {}
    fb = (b.trace.get("final") or {}).get("checkpoints") or {}
    for rel in sorted(set(fa) & set(fb)):
        ca = torch.load(a.path(rel))
        cb = torch.load(b.path(rel))
        for k in sorted(set(ca["state_dict"]) | set(cb["state_dict"])):
            ta, tb = ca["state_dict"].get(k), cb["state_dict"].get(k)
            if ta is None or tb is None or not torch.equal(ta, tb):
                out.append(f"final checkpoint {rel}: state_dict[{k}] differs from the no-crash run")
        if "optimizer" in ca and "optimizer" in cb:
            sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
            if set(sa) != set(sb) or any(
                    not torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"])
                    for i in sa):
                out.append(f"final checkpoint {rel}: optimizer momentum differs from the no-crash run")
            ga, gb = ca["optimizer"]["param_groups"], cb["optimizer"]["param_groups"]
            if ga != gb:
                out.append(f"final checkpoint {rel}: optimizer param_groups {ga} != {gb}")
        if ca.get("param_schedulers") != cb.get("param_schedulers"):
            out.append(f"final checkpoint {rel}: param_schedulers {ca.get('param_schedulers')} "
                       f"!= {cb.get('param_schedulers')}")
    return out


def crash_differences(tc, tmp, name, expected_trace, scenario):
    """Crash-outcome checks of a crash scenario; returns (diffs, simulation)."""
    sim = Simulation(tmp, name, scenario)
    tc.assertEqual(sim.rc, 0, sim.describe())
    tc.assertIsNotNone(sim.trace, sim.describe())
    nocrash = Simulation(tmp, name + "-nocrash", without_crash(scenario))
    tc.assertEqual(nocrash.rc, 0, nocrash.describe())
    tc.assertEqual([r["end"] for r in nocrash.trace["runs"]], ["completed"])

    expected = expected_trace if expected_trace is not None else sim.trace
    diffs = trace_compare.compare(expected, sim.trace, final_against=nocrash.trace)
    # The crash points themselves.
    for i, (er, ar) in enumerate(zip(expected["runs"], sim.trace["runs"])):
        if er.get("end") == "crashed" and ar.get("crash") != er.get("crash"):
            diffs.append(f"run {i}: crash: expected {er.get('crash')}, got {ar.get('crash')}")
    # Before the first crash nothing was resumed: the first run is MMEngine's, event by event.
    if expected_trace is not None:
        exp0 = trace_compare.normalise(expected["runs"][0].get("events") or [])
        act0 = trace_compare.normalise(sim.trace["runs"][0].get("events") or [])
        trace_compare._cmp_events(diffs, 0, exp0, act0)
    diffs += final_checkpoint_differences(sim, nocrash)
    return diffs, sim


def run_example(tc, tmp, path):
    case = _load(path)
    name = os.path.splitext(os.path.basename(path))[0]
    expected = case["trace"]
    if trace_compare.is_crash_trace(expected):
        diffs, _ = crash_differences(tc, tmp, name, expected, case["scenario"])
    else:
        sim = Simulation(tmp, name, case["scenario"])
        tc.assertEqual(sim.rc, 0, sim.describe())
        tc.assertIsNotNone(sim.trace, sim.describe())
        diffs = trace_compare.compare(case, sim.trace)
    if diffs:
        print(f"\n== {name}: {len(diffs)} differences\n{report(diffs)}", flush=True)
    tc.assertEqual(diffs, [], f"{name}: {len(diffs)} differences (printed above)")


# ---- own scenarios ------------------------------------------------------------------------------

def events_of(run, stage=None):
    return [e for e in run["events"] if stage is None or e["stage"] == stage]


def check_generic_crash(tc, tmp, name, scenario):
    diffs, sim = crash_differences(tc, tmp, name, None, scenario)
    ends = [r["end"] for r in sim.trace["runs"]]
    tc.assertEqual(ends[0], "crashed", sim.describe())
    tc.assertEqual(ends[-1], "completed", sim.describe())
    if diffs:
        print(f"\n== {name}: {len(diffs)} differences\n{report(diffs)}", flush=True)
    tc.assertEqual(diffs, [])
    return sim


def check_restart_end_max_keep(tc, tmp, name, scenario):
    sim = Simulation(tmp, name, scenario)
    tc.assertEqual(sim.rc, 0, sim.describe())
    runs = sim.trace["runs"]
    tc.assertEqual([r["end"] for r in runs], ["completed", "completed"])
    tc.assertEqual(events_of(runs[0], "after_train")[0]["info"]["keep_ckpt_ids"], [2, 3, 4])
    tc.assertEqual(runs[1]["resumed_from"], "$ROOT/work_dirs/exp/epoch_4.pth")
    bt = events_of(runs[1], "before_train")[0]
    tc.assertEqual((bt["epoch"], bt["iter"]), (4, 8))
    tc.assertEqual(bt["info"]["keep_ckpt_ids"], [4])
    tc.assertEqual(bt["files"], ["work_dirs/exp/epoch_4.pth", "work_dirs/exp/last_checkpoint"])
    e5 = events_of(runs[1], "after_train_epoch")[0]
    tc.assertEqual([s["file"] for s in e5["saves"]], ["$ROOT/work_dirs/exp/epoch_5.pth"])
    tc.assertEqual(e5["info"]["keep_ckpt_ids"], [5])
    tc.assertEqual(e5["files"], ["work_dirs/exp/epoch_5.pth", "work_dirs/exp/last_checkpoint"])
    final = sim.trace["final"]
    tc.assertEqual(final["files"], ["work_dirs/exp/epoch_6.pth", "work_dirs/exp/last_checkpoint"])
    ck = final["checkpoints"]["work_dirs/exp/epoch_6.pth"]
    tc.assertEqual(ck["meta"], {"epoch": 6, "iter": 12})
    tc.assertEqual(ck["hub"]["keep_ckpt_ids"], [6])
    tc.assertEqual(events_of(runs[1], "after_train")[0]["last_checkpoint"],
                   "$ROOT/work_dirs/exp/epoch_6.pth")


def check_load_from_no_resume(tc, tmp, name, scenario):
    sim = Simulation(tmp, name, scenario)
    tc.assertEqual(sim.rc, 0, sim.describe())
    runs = sim.trace["runs"]
    tc.assertEqual([r["end"] for r in runs], ["completed", "completed"])
    tc.assertEqual(runs[1]["resume"], False)
    tc.assertEqual(runs[1]["resumed_from"], "$ROOT/work_dirs/exp/epoch_1.pth")
    bt = events_of(runs[1], "before_train")[0]
    tc.assertEqual((bt["epoch"], bt["iter"]), (0, 0), "load_from restores no counters")
    tc.assertEqual(bt.get("info", {}), {}, "load_from restores no hook state")
    ep = events_of(runs[1], "after_train_epoch")
    tc.assertEqual([(e["epoch"], e["iter"]) for e in ep], [(0, 2), (1, 4), (2, 6)])
    val = events_of(runs[1], "after_val_epoch")[0]
    tc.assertEqual(val["info"]["best_score"], 0.2, "a fresh hook: 0.2 is the first best")
    tc.assertEqual(val["info"]["best_ckpt"], "$ROOT/work_dirs/exp/best_acc_epoch_1.pth")
    final = sim.trace["final"]
    tc.assertEqual(sorted(final["files"]),
                   ["work_dirs/exp/best_acc_epoch_1.pth", "work_dirs/exp/epoch_1.pth",
                    "work_dirs/exp/epoch_2.pth", "work_dirs/exp/epoch_3.pth",
                    "work_dirs/exp/last_checkpoint"])
    tc.assertEqual(final["checkpoints"]["work_dirs/exp/best_acc_epoch_1.pth"]["hub"]["best_score"],
                   0.2)
    tc.assertEqual(final["checkpoints"]["work_dirs/exp/epoch_3.pth"]["meta"],
                   {"epoch": 3, "iter": 6})
    if torch is not None:
        # The weights were loaded: run 1's epoch_1.pth is not a from-scratch epoch_1.pth.
        fresh = Simulation(tmp, name + "-fresh", without_crash(scenario))
        tc.assertEqual(fresh.rc, 0, fresh.describe())
        a = torch.load(sim.path("work_dirs/exp/epoch_1.pth"))["state_dict"]
        b = torch.load(fresh.path("work_dirs/exp/epoch_1.pth"))["state_dict"]
        tc.assertFalse(all(torch.equal(a[k], b[k]) for k in a),
                       "run 1 trained from the loaded weights")


def check_malformed(tc, tmp, name, scenario):
    sim = Simulation(tmp, name, scenario)
    tc.assertNotEqual(sim.rc, 0, sim.describe())
    tc.assertIn("max_epochs", sim.stderr)
    tc.assertIsNone(sim.trace, "no trace for a malformed scenario")
    tc.assertFalse(os.path.exists(sim.root), "the root is not created for a malformed scenario")
    tc.assertEqual(sim.stdout, "")


def check_crash_epoch_loop_iter_hook(tc, tmp, name, scenario):
    sim = check_generic_crash(tc, tmp, name, scenario)
    runs = sim.trace["runs"]
    tc.assertEqual(runs[0]["crash"], {"at": "after_train_iter", "step": 5})
    tc.assertEqual(runs[1]["resumed_from"], "$ROOT/work_dirs/exp/iter_4.pth")
    its = [e["iter"] for e in events_of(runs[1], "after_train_iter")]
    tc.assertEqual(its, [4, 5, 6, 7, 8], "the resumed epoch continues at its second batch")
    tc.assertEqual(sim.trace["final"]["files"],
                   ["work_dirs/exp/iter_2.pth", "work_dirs/exp/iter_4.pth",
                    "work_dirs/exp/iter_6.pth", "work_dirs/exp/iter_8.pth",
                    "work_dirs/exp/iter_9.pth", "work_dirs/exp/last_checkpoint"])


def check_crash_iter_loop(tc, tmp, name, scenario):
    sim = check_generic_crash(tc, tmp, name, scenario)
    runs = sim.trace["runs"]
    tc.assertEqual(runs[1]["resumed_from"], "$ROOT/work_dirs/exp/iter_4.pth")
    tc.assertEqual([e["iter"] for e in events_of(runs[1], "after_train_iter")], [4, 5, 6, 7])
    tc.assertEqual(events_of(runs[0])[-1]["stage"], "after_train_iter")
    tc.assertEqual(events_of(runs[0])[-1]["iter"], 4)


def check_crash_first_val(tc, tmp, name, scenario):
    sim = check_generic_crash(tc, tmp, name, scenario)
    runs = sim.trace["runs"]
    tc.assertEqual(runs[0]["crash"], {"at": "after_val_epoch", "step": None})
    last = runs[0]["events"][-1]
    tc.assertEqual((last["stage"], last["epoch"]), ("after_val_epoch", 1))
    # record_all_stages: the by_epoch hook's after_train_iter events are recorded too.
    tc.assertEqual(len(events_of(runs[0], "after_train_iter")), 2)
    for ck in sim.trace["final"]["checkpoints"].values():
        tc.assertNotIn("param_schedulers", ck["keys"])
        tc.assertNotIn("n_param_schedulers", ck)


def check_restart_end_republish(tc, tmp, name, scenario):
    sim = Simulation(tmp, name, scenario)
    tc.assertEqual(sim.rc, 0, sim.describe())
    runs = sim.trace["runs"]
    tc.assertEqual([r["end"] for r in runs], ["completed", "completed"])
    tc.assertEqual([e["stage"] for e in runs[1]["events"]], ["before_train", "after_train"])
    last = "$ROOT/work_dirs/exp/epoch_2-<sha8#1>.pth"
    best = "$ROOT/work_dirs/exp/best_acc_epoch_1-<sha8#2>.pth"
    published = sim.trace["final"]["published"]
    tc.assertEqual([p["file"] for p in published], [last, best, last, best])
    for p in published:
        tc.assertEqual(p["keys"], ["meta", "state_dict"])
    tc.assertEqual(sim.trace["final"]["files"],
                   ["work_dirs/exp/best_acc_epoch_1-<sha8#2>.pth",
                    "work_dirs/exp/best_acc_epoch_1.pth", "work_dirs/exp/epoch_1.pth",
                    "work_dirs/exp/epoch_2-<sha8#1>.pth", "work_dirs/exp/epoch_2.pth",
                    "work_dirs/exp/last_checkpoint"])


CHECKS = {
    "restart_end_republish": check_restart_end_republish,
    "restart_end_max_keep": check_restart_end_max_keep,
    "load_from_no_resume": check_load_from_no_resume,
    "malformed_max_epochs": check_malformed,
    "crash_epoch_loop_iter_hook": check_crash_epoch_loop_iter_hook,
    "crash_iter_loop": check_crash_iter_loop,
    "crash_first_val_param_scheduler_off": check_crash_first_val,
}


class SimulateExamplesTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="simulate-examples-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_examples(self):
        paths = sorted(glob.glob(os.path.join(EXAMPLES, "*.json")))
        self.assertTrue(paths, f"no examples in {EXAMPLES}")
        for path in paths:
            with self.subTest(example=os.path.basename(path)):
                run_example(self, self.tmp, path)

    def test_scenarios(self):
        paths = sorted(glob.glob(os.path.join(SCENARIOS, "*.json")))
        self.assertTrue(paths, f"no scenarios in {SCENARIOS}")
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0]
            with self.subTest(scenario=name):
                self.assertIn(name, CHECKS, f"{path} has no check in {__file__}")
                CHECKS[name](self, self.tmp, name, scenario_of(_load(path)))

    def test_root_must_be_empty(self):
        root = os.path.join(self.tmp, "busy")
        os.makedirs(root)
        with open(os.path.join(root, "keep.txt"), "w") as f:
            f.write("x")
        scenario = os.path.join(self.tmp, "s.json")
        with open(scenario, "w") as f:
            json.dump({"name": "s", "max_epochs": 1}, f)
        p = subprocess.run([BIN, "simulate", scenario, "--root", root],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=TIMEOUT_S)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("not empty", p.stderr)
        self.assertEqual(p.stdout, "")
        self.assertEqual(os.listdir(root), ["keep.txt"])

    def test_trace_to_stdout_and_case_file(self):
        # -o defaults to stdout; a case file is accepted as a scenario.
        case = os.path.join(EXAMPLES, "init_save_begin_negative.json")
        p = subprocess.run([BIN, "simulate", case, "--root", os.path.join(self.tmp, "r")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=TIMEOUT_S)
        self.assertEqual(p.returncode, 0, p.stderr)
        trace = json.loads(p.stdout)
        self.assertEqual(trace["format"], 1)
        self.assertEqual(trace["runs"][0]["end"], "error")
        self.assertEqual(trace["runs"][0]["error"]["phase"], "hook_init")
        self.assertIn("save_begin", trace["runs"][0]["error"]["message"])


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    BIN = os.path.abspath(sys.argv[1])
    EXAMPLES = os.path.abspath(sys.argv[2])
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)
