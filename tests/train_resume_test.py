#!/usr/bin/python3
"""`ckptledger train` (tools/train/train_job.h) killed and resumed, per optimizer, and fed files
written by Python.

    train_resume_test.py CKPTLEDGER_BIN [unittest args]

Per optimizer (with amsgrad where it exists), with dropout and StepLR on: an uninterrupted run,
and a run SIGKILLed at random iterations (read from its `--progress` lines) and restarted until
it finishes. The final checkpoints (iter_N.pth) must hold bitwise-equal weights, optimizer state,
scheduler state, RNG state and data-loader position, and `ckptledger verify` must pass.
CKPT_TRAIN_SEED=S fixes the kill points (printed on failure).
Then: a checkpoint written by Python's torch.optim (MMEngine's layout) resumes the job
(--resume-from); a bare `torch.save(model.state_dict())` and a DDP (`module.`-prefixed) state dict
load as --load-from.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

import torch

BIN = None
ITERS = 120
CONFIGS = [
    ["--optimizer", "sgd"],
    ["--optimizer", "adam"],
    ["--optimizer", "adam", "--amsgrad"],
    ["--optimizer", "adamw", "--amsgrad"],
    ["--optimizer", "rmsprop"],
    ["--optimizer", "adagrad"],
]
COMMON = ["--iters", str(ITERS), "--dropout", "0.2", "--scheduler", "step", "--seed", "3"]
SEED = int(os.environ.get("CKPT_TRAIN_SEED", random.randrange(1 << 30)))


def train(work_dir, args, kill_after=None):
    """Runs the job; with kill_after, SIGKILLs it once it reported that iteration. Returns the
    exit status (-9 when killed)."""
    cmd = [BIN, "train", "--work-dir", work_dir, "--progress"] + args
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        for line in p.stdout:
            if line.strip() == "iter %d" % kill_after:
                p.send_signal(signal.SIGKILL)
                break
    out, err = p.communicate(timeout=120)
    if p.returncode not in (0, -signal.SIGKILL):
        raise AssertionError("%s exited %d:\n%s" % (" ".join(cmd), p.returncode, err[-3000:]))
    return p.returncode


def equal(a, b, path=""):
    """The first difference between two loaded checkpoints' values, or None."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.dtype != b.dtype or not torch.equal(a, b):
            return path
        return None
    if isinstance(a, dict):
        if list(a.keys()) != list(b.keys()):
            return path + " keys"
        for k in a:
            d = equal(a[k], b[k], "%s.%s" % (path, k))
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return path + " len"
        for i, (x, y) in enumerate(zip(a, b)):
            d = equal(x, y, "%s.%d" % (path, i))
            if d:
                return d
        return None
    return None if a == b else path


class KilledAndResumed(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ckpt-train-")
        self.rng = random.Random(SEED)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def check_config(self, args):
        name = "-".join(a.strip("-") for a in args)
        ref = os.path.join(self.tmp, name + "-ref")
        self.assertEqual(train(ref, args + COMMON), 0)
        run = os.path.join(self.tmp, name + "-killed")
        kills = sorted(self.rng.sample(range(5, ITERS - 5), 2))
        for k in kills:
            self.assertEqual(train(run, args + COMMON, kill_after=k), -signal.SIGKILL)
        self.assertEqual(train(run, args + COMMON), 0)
        final = "iter_%d.pth" % ITERS
        a = torch.load(os.path.join(ref, final))
        b = torch.load(os.path.join(run, final))
        for key in ("state_dict", "optimizer", "param_schedulers", "rng_state", "data_loader"):
            self.assertIn(key, a)
            self.assertIsNone(equal(a[key], b[key], key),
                              "%s differs after kills at %s (CKPT_TRAIN_SEED=%d)" %
                              (key, kills, SEED))
        v = subprocess.run([BIN, "verify", run],
                           capture_output=True, text=True)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        runs = subprocess.run([BIN, "runs", run, "--json"], capture_output=True, text=True)
        self.assertEqual(runs.returncode, 0, runs.stderr)
        self.assertGreaterEqual(runs.stdout.count('"crashed"'), 1, runs.stdout)



# One test per optimizer configuration: test_optimizer_sgd, test_optimizer_adam_amsgrad, ...
for _args in CONFIGS:
    _name = "test_" + "_".join(a.strip("-") for a in _args)
    setattr(KilledAndResumed, _name, lambda self, a=_args: self.check_config(a))


def python_model():
    """The job's model (train_job.h), as Python builds it: the same names and shapes."""
    return torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Dropout(0.0),
                               torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Dropout(0.0),
                               torch.nn.Linear(32, 3))


class FromPython(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ckpt-train-py-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_python_written_adamw_checkpoint_resumes_the_job(self):
        torch.manual_seed(0)
        model = python_model()
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
        for _ in range(10):
            opt.zero_grad()
            model(torch.randn(16, 2)).sum().backward()
            opt.step()
        src = os.path.join(self.tmp, "from_python.pth")
        torch.save({"meta": {"epoch": 0, "iter": 10}, "state_dict": model.state_dict(),
                    "optimizer": opt.state_dict(), "message_hub": {}}, src)
        work = os.path.join(self.tmp, "work")
        p = subprocess.run([BIN, "train", "--work-dir", work, "--optimizer", "adamw", "--iters",
                            "40", "--resume-from", src], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        h = subprocess.run([BIN, "history", work, "--kind", "resumed", "--json"],
                           capture_output=True, text=True)
        self.assertEqual(h.returncode, 0, h.stderr)
        self.assertIn(src, h.stdout)
        self.assertIn("resumed at epoch 0, iter 10", p.stderr)
        first = torch.load(os.path.join(work, "iter_20.pth"))
        self.assertEqual(first["meta"]["iter"], 20)
        # The Python moments went in: the job's step counter continues Python's.
        self.assertEqual(int(first["optimizer"]["state"][0]["step"]), 20)
        self.assertFalse(os.path.exists(os.path.join(work, "iter_0.pth")))

    def test_bare_and_ddp_state_dicts_load_as_load_from(self):
        torch.manual_seed(1)
        model = python_model()
        sd = model.state_dict()
        files = {
            "bare.pth": sd,
            "ddp.pth": {"state_dict": {"module." + k: v for k, v in sd.items()}},
        }
        for name, obj in files.items():
            src = os.path.join(self.tmp, name)
            torch.save(obj, src)
            work = os.path.join(self.tmp, "work-" + name)
            p = subprocess.run([BIN, "train", "--work-dir", work, "--iters", "20", "--load-from",
                                src], capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, name + ": " + p.stderr)
            # The job's own init (seed 0) differs from Python's seed-1 weights; after training
            # from them, the weights stay far closer to Python's than to the job's own start.
            out = torch.load(os.path.join(work, "iter_20.pth"))["state_dict"]
            ref = subprocess.run([BIN, "train", "--work-dir", os.path.join(self.tmp, "ref-" + name),
                                  "--iters", "20"], capture_output=True, text=True)
            self.assertEqual(ref.returncode, 0, ref.stderr)
            own = torch.load(os.path.join(self.tmp, "ref-" + name, "iter_20.pth"))["state_dict"]
            d_loaded = (out["0.weight"] - sd["0.weight"]).abs().max().item()
            d_own = (own["0.weight"] - sd["0.weight"]).abs().max().item()
            self.assertLess(d_loaded, d_own, name)

    def test_mmengine_checkpoint_with_history_buffers_in_its_hub_resumes_and_loads(self):
        # MMEngine's message hub pickles HistoryBuffer objects and numpy values; a fake
        # mmengine.logging.history_buffer module makes Python pickle them by reference, as
        # MMEngine does.
        import types
        import numpy
        mod = types.ModuleType("mmengine.logging.history_buffer")

        class HistoryBuffer:
            def __init__(self):
                self._log_history = numpy.array([0.5, 0.25])
                self._count_history = numpy.array([1, 1])
                self.max_length = 1000000
        HistoryBuffer.__module__ = mod.__name__
        HistoryBuffer.__qualname__ = "HistoryBuffer"
        mod.HistoryBuffer = HistoryBuffer
        for name in ("mmengine", "mmengine.logging"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules[mod.__name__] = mod
        torch.manual_seed(2)
        model = python_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(16, 2)).sum().backward()
            opt.step()
        hub = {"log_scalars": {"train/loss": HistoryBuffer()},
               "runtime_info": {"iter": 4, "best_score": numpy.float64(0.5)},
               "resumed_keys": {"iter": True}}
        src = os.path.join(self.tmp, "mmengine.pth")
        torch.save({"meta": {"epoch": 0, "iter": 4, "seed": numpy.int64(2)},
                    "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                    "message_hub": hub}, src)
        for flag in ("--resume-from", "--load-from"):
            work = os.path.join(self.tmp, "work" + flag)
            p = subprocess.run([BIN, "train", "--work-dir", work, "--iters", "20", flag, src],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, flag + ": " + p.stderr)
            out = torch.load(os.path.join(work, "iter_20.pth"))
            step = out["optimizer"]["state"]
            self.assertEqual(out["meta"]["iter"], 20, flag)
            if flag == "--resume-from":
                self.assertIn("resumed at epoch 0, iter 4", p.stderr)
            else:
                self.assertNotIn("resumed at", p.stderr)
            self.assertTrue(step, flag)

    def test_a_state_dict_for_another_model_is_refused_naming_the_keys(self):
        src = os.path.join(self.tmp, "other.pth")
        torch.save({"state_dict": torch.nn.Linear(2, 5).state_dict()}, src)
        p = subprocess.run([BIN, "train", "--work-dir", os.path.join(self.tmp, "w"), "--iters",
                            "5", "--load-from", src], capture_output=True, text=True)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("missing keys in source state_dict: 0.weight", p.stderr)
        self.assertIn("unexpected key in source state_dict: weight", p.stderr)


if __name__ == "__main__":
    BIN = sys.argv.pop(1)
    unittest.main()
