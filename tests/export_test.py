#!/usr/bin/python3
"""`ckptledger export ... -o FILE.pth` (tools/train/export.h): a checkpoint of any layout as one file
that Python's torch.load opens.

    export_test.py BIN_DIR [unittest args]

BIN_DIR holds `ckptledger` and `ckptledger-train`. Three real 2-rank jobs of `ckptledger-train
train` under torchrun (the same seed, iterations and hook config but for save_layout: "main",
"spread", "sharded") train identically, so the exports of their newest checkpoints must hold equal
weights: "main"'s export is its checkpoint file byte for byte; "spread"'s is the parts assembled;
"sharded"'s is rank 0's part with every rank's optimizer state under "optimizer_shards". Then: a
damaged part makes the export of its checkpoint fail naming the part and the checkpoint, and the
export of the work_dir fall back to the previous checkpoint; an existing output is refused without
--force; a part or a plain file given directly; the catalog's CSV `export` is not handed over.
"""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

import torch

BIN_DIR = None
ITERS = 40
INTERVAL = 10
LAYOUTS = ["main", "spread", "sharded"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def equal(a, b, path=""):
    """The first difference between two loaded values, or None."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.dtype != b.dtype or not torch.equal(a, b):
            return path
        return None
    if isinstance(a, dict):
        if not isinstance(b, dict) or list(a.keys()) != list(b.keys()):
            return path + " keys"
        for k in a:
            d = equal(a[k], b[k], "%s.%s" % (path, k))
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return path + " len"
        for i, (x, y) in enumerate(zip(a, b)):
            d = equal(x, y, "%s.%d" % (path, i))
            if d:
                return d
        return None
    return None if a == b else path


def read(path):
    with open(path, "rb") as f:
        return f.read()


def strings(v):
    """Every string value in a loaded checkpoint."""
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from strings(x)
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from strings(x)


class ExportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="ckptledger-export-test-")
        os.makedirs(os.path.join(cls.root, "out"))
        cls.work = {}
        jobs = []
        # The three jobs at once (each on its own rendezvous port): they are mostly start-up.
        for layout in LAYOUTS:
            work = os.path.join(cls.root, layout)
            config = os.path.join(cls.root, layout + ".json")
            with open(config, "w") as f:
                json.dump({"interval": INTERVAL, "by_epoch": False, "max_keep_ckpts": 3,
                           "save_best": "acc", "save_layout": layout}, f)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max_restarts", "0",
                   "--redirects", "2", "--tee", "2", "--log_dir", os.path.join(cls.root, layout + "-logs"),
                   "--master_port", str(free_port()), "--no_python",
                   os.path.join(BIN_DIR, "ckptledger-train"), "train", "--work-dir", work,
                   "--config", config, "--iters", str(ITERS), "--seed", "7"]
            jobs.append((layout, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                       stderr=subprocess.STDOUT, text=True)))
            cls.work[layout] = work
        for layout, cmd, p in jobs:
            out, _ = p.communicate(timeout=240)
            if p.returncode != 0:
                raise AssertionError("%s exited %d:\n%s" % (" ".join(cmd), p.returncode, out[-4000:]))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def export(self, *args, binary="ckptledger-train", rc=0):
        p = subprocess.run([os.path.join(BIN_DIR, binary), "export"] + list(args),
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, rc, "export %s: exit %d\nstdout: %s\nstderr: %s"
                         % (" ".join(args), p.returncode, p.stdout, p.stderr))
        return p

    def out(self, name):
        return os.path.join(self.root, "out", name)

    def newest(self, layout):
        return os.path.join(self.work[layout], "iter_%d.pth" % ITERS)

    def exported(self, layout):
        """The export of the layout's work_dir (once), loaded."""
        path = self.out(layout + ".pth")
        if not os.path.exists(path):
            # "main" through `ckptledger`, which hands it over; the others directly.
            p = self.export(self.work[layout], "-o", path,
                            binary="ckptledger" if layout == "main" else "ckptledger-train")
            self.assertIn("exported %s" % self.newest(layout), p.stdout)
        return torch.load(path, map_location="cpu")

    def test_main_is_the_checkpoint_file(self):
        ckpt = self.exported("main")
        self.assertEqual(read(self.out("main.pth")), read(self.newest("main")))
        self.assertEqual(ckpt["meta"]["iter"], ITERS)
        self.assertIsNone(equal(ckpt["state_dict"], torch.load(self.newest("main"))["state_dict"]))

    def test_spread_is_assembled(self):
        self.assertTrue(glob.glob(self.newest("spread")[:-4] + ".part1-*.pth"))
        ckpt = self.exported("spread")
        self.assertFalse([s for s in strings(ckpt) if s.startswith("ckptledger-part:")])
        self.assertNotIn("ckptledger_part", ckpt)
        # Identical training: the weights and optimizer state of the "main" run.
        main = self.exported("main")
        self.assertIsNone(equal(ckpt["state_dict"], main["state_dict"]))
        self.assertIsNone(equal(ckpt["optimizer"], main["optimizer"]))
        self.assertEqual(ckpt["meta"]["iter"], ITERS)
        # Python can load its weights into the model it describes.
        model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Dropout(0.0),
                                    torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Dropout(0.0),
                                    torch.nn.Linear(32, 3))
        model.load_state_dict(ckpt["state_dict"])

    def test_sharded_carries_every_rank_optimizer(self):
        ckpt = self.exported("sharded")
        main = self.exported("main")
        self.assertIsNone(equal(ckpt["state_dict"], main["state_dict"]))
        shards = ckpt["optimizer_shards"]
        self.assertEqual(len(shards), 2)
        self.assertIsNone(equal(shards[0], ckpt["optimizer"]))
        # Rank 1's own part: its optimizer state (equal to rank 0's here: gradients all-reduced).
        part1 = glob.glob(self.newest("sharded")[:-4] + ".part1-*.pth")
        self.assertEqual(len(part1), 1)
        self.assertIsNone(equal(shards[1], torch.load(part1[0])["optimizer"]))
        self.assertIsNone(equal(shards[1], main["optimizer"]))

    def test_named_checkpoint_and_refusals(self):
        work = self.work["sharded"]
        older = os.path.join(work, "iter_%d.pth" % (ITERS - INTERVAL))
        out = self.out("named.pth")
        p = self.export(older, "-o", out)
        self.assertIn("exported %s (layout sharded, 2 part(s))" % older, p.stdout)
        self.assertEqual(torch.load(out)["meta"]["iter"], ITERS - INTERVAL)
        # An existing output: refused (exit 2, untouched) unless --force.
        before = read(out)
        p = self.export(self.newest("sharded"), "-o", out, rc=2)
        self.assertIn("exists", p.stderr)
        self.assertEqual(read(out), before)
        self.export(self.newest("sharded"), "-o", out, "--force")
        self.assertEqual(torch.load(out)["meta"]["iter"], ITERS)
        # --force never replaces the checkpoint itself.
        self.export(older, "-o", older, "--force", rc=2)
        # A part names its checkpoint; a checkpoint the ledger no longer holds is not found.
        part1 = glob.glob(older[:-4] + ".part1-*.pth")[0]
        p = self.export(part1, "-o", self.out("part.pth"), rc=2)
        self.assertIn("part 1 of checkpoint %s" % older, p.stderr)
        p = self.export(os.path.join(work, "iter_%d.pth" % INTERVAL), "-o", self.out("gone.pth"), rc=3)
        self.assertFalse(os.path.exists(self.out("gone.pth")))

    def test_plain_file_exported_as_is(self):
        d = os.path.join(self.root, "plain")
        os.makedirs(d)
        src = os.path.join(d, "weights.pth")
        torch.save({"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "note": "python"}, src)
        self.export(src, "-o", os.path.join(d, "copy.pth"))
        self.assertEqual(read(src), read(os.path.join(d, "copy.pth")))
        # A "spread" part 0 copied out of its work_dir has no ledger to find its other parts.
        skeleton = os.path.join(d, "skeleton.pth")
        shutil.copy(os.path.join(self.work["spread"], "iter_%d.pth" % ITERS), skeleton)
        p = self.export(skeleton, "-o", os.path.join(d, "skeleton-out.pth"), rc=2)
        self.assertIn("part 0 of a \"spread\" checkpoint", p.stderr)

    def test_zz_damaged_part(self):
        # Last (zz): it damages the "spread" run's newest checkpoint.
        self.exported("spread")
        newest = self.newest("spread")
        part1 = glob.glob(newest[:-4] + ".part1-*.pth")[0]
        with open(part1, "r+b") as f:
            f.seek(os.path.getsize(part1) // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0xFF]))
        p = self.export(newest, "-o", self.out("damaged.pth"), rc=4)
        self.assertIn(newest, p.stderr)
        self.assertIn("part 1 (%s)" % part1, p.stderr)
        self.assertFalse(os.path.exists(self.out("damaged.pth")))
        # The work_dir: the newest whose every part verifies, as a resume would choose.
        p = self.export(self.work["spread"], "-o", self.out("fallback.pth"))
        self.assertIn("skipped %s: part 1 (%s)" % (newest, part1), p.stderr)
        previous = os.path.join(self.work["spread"], "iter_%d.pth" % (ITERS - INTERVAL))
        self.assertIn("exported %s" % previous, p.stdout)
        self.assertEqual(torch.load(self.out("fallback.pth"))["meta"]["iter"], ITERS - INTERVAL)

    def test_catalog_export_stays(self):
        p = self.export(self.work["main"], "--view", "checkpoints", binary="ckptledger")
        self.assertTrue(p.stdout.startswith("seq,") or "path" in p.stdout.splitlines()[0], p.stdout[:200])


if __name__ == "__main__":
    BIN_DIR = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
