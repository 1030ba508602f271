#!/usr/bin/python3
"""The kill -9 torture of a job of two ranks under torchrun (docs/distributed.md).

    dist_torture_test.py BUILD_BIN_DIR [--kills N] [--seed S] [--layouts main,spread,sharded]
                         [--iters N] [--iter-delay-ms D] [--monitor-interval S] [--keep] [--tmp DIR]

BUILD_BIN_DIR holds `ckptledger` and `ckptledger-train`. CI (ctest): the defaults, 10 kills per
layout, 1.5-2 min for the three layouts on 2 cores. Bench-sized (not in ctest; 2-3 s a kill on 2
cores: 100 kills of one layout in 3.5-5.5 min):

    tests/dist_torture_test.py build/bin --kills 100 [--layouts spread] [--seed S]

For each layout ("main", "spread", "sharded"), with the hook config {"interval": 5, "by_epoch":
false, "max_keep_ckpts": 2, "save_best": "acc", "save_layout": LAYOUT}: a save every 5 iterations
with a prune, a validation after it with, when the score improved, a best save, a prune of the
previous best and the regular re-save (a replacement: save_prepared); 400 iterations, 5 ms apart:

  1. the reference: `ckptledger-train train --work-dir A --iters N --seed S --iter-delay-ms D`, two
     ranks under torchrun (--max_restarts 0), uninterrupted; it runs beside the torture;
  2. the torture, in a fresh work dir B: the same job under torchrun with --max_restarts above the
     number of kills and --monitor_interval 0.5 (the agent polls its workers that often: about
     0.4 s from a kill to the next group's processes, against about 3 s with torchrun's default
     of 5 s). Once both ranks of a group exist (processes whose /proc/PID/cmdline starts with the
     ckptledger-train binary and names B; never the torchrun agent), the driver arms one kill:
     20% of the kills uniform(0, 1.2) s after that, the rest uniform(0, 1.2) s after the group's
     first ledger event (reconciliation's or run_started) -- a group spends 1.5-2.5 s loading
     libtorch and in the rendezvous before it, so delays counted from the processes' start alone
     land almost all in start-up. The kill is a SIGKILL to one rank drawn at random; the driver
     then waits for both ranks of the next group before it arms the next. The kills land in
     start-up and resume (the rendezvous, reconciliation, the agreement on the checkpoint to
     load), training steps, staging, part writes, the exchange, save_prepared, the commit,
     prunes; each is classified by the ledger's newest event at the moment of the kill (read-only,
     "after save_begun": inside a save's part writes, exchange or commit). After the N-th kill
     the job is left to finish. A job that finishes before N kills (a round) is followed by
     another round in a fresh work dir B2, ... Random draws come from random.Random(seed) (the
     seed is printed); where a kill lands still depends on timing.
  3. checks, for the reference and every round (the invariants) and against the reference (the
     equalities):
     - torchrun exits 0; every restart is one of the kills (a restart more is a rank that failed
       by itself: its stderr.log lines are printed);
     - `ckptledger verify W` exits 0;
     - nothing left to reconcile: `ckptledger gc W --json` (a dry run) has no finding. This is
       checked on W as the job left it, neither after `gc --apply` nor after another start of the
       job: both would reconcile first and so hide what they are meant to find. The leftovers of a
       killed group (its siblings' uncommitted parts, temp files) are reconciled by the next
       group's start, and the last group ran to its end without a kill, so a finished job owes
       nothing: a finding here is a leftover of a completed run (a bug);
     - no orphan part, checked from the ledger without reconcile's code: every
       `*.part<r>-r<run>s<save>.pth` on disk is listed in `part_paths` of the newest
       save_committed of a live checkpoint (the non-part *.pth on disk), and no temp file;
     - the live checkpoints (their names, last_checkpoint's target and every part count) equal
       the reference's; every live checkpoint equals the reference's part by part, rank by rank
       (every tensor torch.equal, bitwise; other values equal; paths taken relative to W;
       meta.time ignored): the final one, the previous one and the best;
     - `ckptledger-train export W` (the newest checkpoint as one MMEngine file, parts assembled)
       equals the reference's export the same way: the final weights and optimizer state;
     - `ckptledger best W --json` equals the reference's (metric, rule, score, file, step).
Prints per layout: rounds, kills, restarts, where the kills landed, the `recovered` findings
recorded (kind='recovered', $.finding), the mean time from a kill to the next group, and the wall
time; exits 1 on any failure. --keep keeps the work dirs (torchrun's --log_dir of W is W.L/:
W.L/*/attempt_K/RANK/stderr.log).

Standard library and torch only.
"""

import argparse
import collections
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import torch

LAYOUTS = ("main", "spread", "sharded")
LEDGER = "ckptledger.sqlite"
TEMP_SUFFIX = ".ckptledger-tmp"
RANKS = 2
# A kill's moment: STARTUP_SHARE of the kills uniform(KILL_DELAY_S) after both ranks of a group
# exist (they spend 1-3 s loading libtorch, in the rendezvous and resuming); the rest that long
# after the group's first ledger event (reconciliation's or run_started), so most land in the
# training and its saves.
STARTUP_SHARE = 0.2
KILL_DELAY_S = (0.0, 1.2)
ROUND_TIMEOUT_S = 600


def is_part_name(name):
    """policy/parts.h: <stem>.part<r>-r<run>s<save>.pth."""
    if not name.endswith(".pth") or ".part" not in name:
        return False
    tail = name[name.rfind(".part") + 5:-4]
    r, sep, rest = tail.partition("-r")
    run, sep2, save = rest.partition("s")
    return bool(sep and sep2) and r.isdigit() and run.isdigit() and save.isdigit()


class Tools:
    def __init__(self, bin_dir):
        self.ck = os.path.join(bin_dir, "ckptledger")
        self.train = os.path.join(bin_dir, "ckptledger-train")
        for exe in (self.ck, self.train):
            if not os.access(exe, os.X_OK):
                sys.exit("dist_torture_test.py: %s is missing" % exe)

    def run(self, argv, timeout=120):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr


def has_exited(pid):
    """True when `pid` already ended: gone, or a zombie its parent has not reaped yet (a SIGKILL
    sent to it would be counted as a kill that lands on nothing)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Job:
    """One torchrun invocation of the train job in a work dir."""

    def __init__(self, tools, args, layout, work, config, max_restarts):
        self.work = work
        self.logs = work + ".L"
        self.console = work + ".console.txt"
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(RANKS),
                "--max_restarts", str(max_restarts), "--monitor_interval",
                str(args.monitor_interval), "--master_addr", "127.0.0.1", "--master_port",
                str(free_port()), "--redirects", "2", "--tee", "2", "--log_dir", self.logs,
                "--no_python", tools.train, "train", "--work-dir", work, "--config", config,
                "--iters", str(args.iters), "--seed", str(args.seed), "--iter-delay-ms",
                str(args.iter_delay_ms)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        with open(self.console, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        self.train = tools.train
        self.started = time.monotonic()
        self.ended = None  # when torchrun exited

        def note_end():
            self.proc.wait()
            self.ended = time.monotonic()
        threading.Thread(target=note_end, daemon=True).start()

    def ranks(self):
        """{pid: rank} of this job's rank processes alive now (not the agent, not zombies)."""
        out = {}
        work = self.work.encode()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    argv = f.read().split(b"\0")
                if not argv or argv[0] != self.train.encode() or work not in argv:
                    continue
                with open("/proc/%s/environ" % d, "rb") as f:
                    env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
                out[int(d)] = int(env.get(b"RANK", b"-1"))
            except (OSError, ValueError):
                continue
        return out

    def wait_group(self, old, deadline):
        """{pid: rank} once all ranks of a group with no pid in `old` exist; None if torchrun
        exited (or the deadline passed) first."""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return None
            group = {p: r for p, r in self.ranks().items() if p not in old}
            if len(group) == RANKS:
                return group
            time.sleep(0.01)
        return None

    def wait(self, deadline):
        try:
            return self.proc.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return "timeout"

    def attempts(self):
        n = 0
        for d, subdirs, _ in os.walk(self.logs):
            n += sum(1 for s in subdirs if s.startswith("attempt_"))
        return n

    def error_lines(self, limit=12):
        """The ranks' own error lines, from every attempt's stderr.log."""
        out = []
        for d, _, files in sorted(os.walk(self.logs)):
            if "stderr.log" not in files:
                continue
            with open(os.path.join(d, "stderr.log"), errors="replace") as f:
                for line in f:
                    if "error" in line.lower() or "terminate" in line.lower():
                        out.append("%s: %s" % (os.path.relpath(d, self.logs), line.rstrip()[:400]))
        return out[:limit]


def ledger_rows(work, sql, timeout=5):
    con = sqlite3.connect("file:%s?mode=ro" % os.path.join(work, LEDGER), uri=True, timeout=timeout)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def ledger_head(work):
    """(newest seq, its kind) of the ledger now; (0, None) before it exists."""
    try:
        rows = ledger_rows(work, "SELECT seq, kind FROM events ORDER BY seq DESC LIMIT 1", 0.2)
        return rows[0] if rows else (0, None)
    except sqlite3.Error:
        return (0, None)


def findings(work):
    rows = ledger_rows(work, "SELECT json_extract(detail, '$.finding'), count(*) FROM events "
                             "WHERE kind = 'recovered' GROUP BY 1")
    return {k: n for k, n in rows}


# ---- a work dir as the job left it ---------------------------------------------------------------

def live_checkpoints(work):
    """{name: [part names, rank order]} of the live checkpoints (the non-part *.pth on disk), from
    the newest save_committed of each."""
    out = {}
    for name in sorted(os.listdir(work)):
        if not name.endswith(".pth") or is_part_name(name):
            continue
        rows = ledger_rows(work, "SELECT detail FROM events WHERE kind = 'save_committed' AND "
                                 "path = '%s' ORDER BY seq DESC LIMIT 1"
                           % os.path.join(work, name).replace("'", "''"))
        parts = [os.path.join(work, name)]
        if rows:
            parts = json.loads(rows[0][0]).get("part_paths") or parts
        out[name] = [os.path.relpath(p, work) for p in parts]
    return out


def invariants(tools, work):
    """Failures of the checks that need no reference."""
    fails = []
    rc, out, err = tools.run([tools.ck, "verify", work])
    if rc != 0:
        fails.append("verify exited %d: %s" % (rc, (out + err).strip()[-1500:]))
    rc, out, err = tools.run([tools.ck, "gc", work, "--json"])
    try:
        todo = json.loads(out).get("findings", [])
    except ValueError:
        todo = ["unreadable: %s" % (out + err)[-500:]]
    if rc != 0 or todo:
        fails.append("gc (dry run) exited %d; reconciliation would still do: %s"
                     % (rc, json.dumps(todo)[:1500]))
    live = live_checkpoints(work)
    listed = {p for parts in live.values() for p in parts}
    orphans = sorted(n for n in os.listdir(work) if is_part_name(n) and n not in listed)
    if orphans:
        fails.append("orphan parts (no live checkpoint lists them): %s" % orphans)
    temps = sorted(n for n in os.listdir(work) if TEMP_SUFFIX in n)
    if temps:
        fails.append("temp files left: %s" % temps)
    return fails


# ---- comparing with the reference ----------------------------------------------------------------

def deep_diff(a, b, root_a, root_b, where, out, limit=10):
    """Appends to `out` where a and b differ: tensors bitwise, strings with each root replaced."""
    if len(out) >= limit:
        return
    if torch.is_tensor(a) or torch.is_tensor(b):
        if not (torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b)):
            out.append("%s: tensors differ" % where)
        return
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a.keys()) != list(b.keys()):
            out.append("%s: keys %s != %s" % (where, list(a.keys()), list(b.keys())))
            return
        for k in a:
            if where == "meta" and k == "time":
                continue
            deep_diff(a[k], b[k], root_a, root_b, "%s.%s" % (where, k) if where else str(k), out,
                      limit)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append("%s: lengths %d != %d" % (where, len(a), len(b)))
            return
        for i, (x, y) in enumerate(zip(a, b)):
            deep_diff(x, y, root_a, root_b, "%s[%d]" % (where, i), out, limit)
        return
    if isinstance(a, str) and isinstance(b, str):
        a, b = a.replace(root_a, "<W>"), b.replace(root_b, "<W>")
    if type(a) != type(b) or a != b:
        out.append("%s: %r != %r" % (where, a, b))


def compare(tools, ref, work):
    fails = []
    live_ref, live = live_checkpoints(ref), live_checkpoints(work)
    if sorted(live_ref) != sorted(live):
        fails.append("live checkpoints %s, the reference's %s" % (sorted(live), sorted(live_ref)))
    for name in sorted(set(live_ref) & set(live)):
        if len(live_ref[name]) != len(live[name]):
            fails.append("%s: %d part(s), the reference's %d" % (name, len(live[name]),
                                                               len(live_ref[name])))
            continue
        for rank, (pa, pb) in enumerate(zip(live_ref[name], live[name])):
            diffs = []
            deep_diff(torch.load(os.path.join(ref, pa)), torch.load(os.path.join(work, pb)),
                      ref, work, "", diffs)
            if diffs:
                fails.append("%s part %d differs from the reference's: %s"
                             % (name, rank, "; ".join(diffs)))

    def last(w):
        try:
            with open(os.path.join(w, "last_checkpoint")) as f:
                return os.path.relpath(f.read().strip(), w)
        except OSError as e:
            return str(e)
    if last(ref) != last(work):
        fails.append("last_checkpoint names %s, the reference's %s" % (last(work), last(ref)))

    exports = []
    for w in (ref, work):
        out_file = w + ".export.pth"
        if not os.path.exists(out_file):  # the reference's is exported once
            rc, out, err = tools.run([tools.train, "export", w, "-o", out_file])
            if rc != 0:
                fails.append("export %s exited %d: %s" % (w, rc, (out + err).strip()[-800:]))
                return fails
        exports.append(torch.load(out_file))
    diffs = []
    deep_diff(exports[0], exports[1], ref, work, "", diffs)
    if diffs:
        fails.append("the exported final checkpoint differs from the reference's: %s"
                     % "; ".join(diffs))
    weights = exports[1].get("state_dict", {})
    if not weights:
        fails.append("the exported checkpoint has no state_dict")

    def best(w):
        rc, out, err = tools.run([tools.ck, "best", w, "--json"])
        if rc != 0:
            return "best exited %d: %s" % (rc, err.strip())
        return [{k: (os.path.relpath(v, w) if k == "path" else v) for k, v in b.items()
                 if k in ("metric", "rule", "score", "path", "step", "epoch", "iter", "status")}
                for b in json.loads(out)]
    if best(ref) != best(work):
        fails.append("best %s, the reference's %s" % (best(work), best(ref)))
    return fails


# ---- one layout ----------------------------------------------------------------------------------

def torture_layout(tools, args, layout, tmp, rng):
    t0 = time.monotonic()
    config = os.path.join(tmp, layout + ".json")
    with open(config, "w") as f:
        json.dump({"interval": 5, "by_epoch": False, "max_keep_ckpts": 2, "save_best": "acc",
                   "save_layout": layout}, f)
    fails = []
    ref = os.path.join(tmp, layout + "-ref")
    # The reference runs beside the first round (the driver mostly waits).
    ref_job = Job(tools, args, layout, ref, config, max_restarts=0)
    ref_s = None

    def reference_done():
        nonlocal ref_s
        if ref_s is not None:
            return ref_s >= 0
        rc = ref_job.wait(time.monotonic() + ROUND_TIMEOUT_S)
        ref_s = (ref_job.ended or time.monotonic()) - ref_job.started
        if rc != 0:
            fails.append("reference: torchrun exited %s: %s" % (rc, ref_job.error_lines()))
            ref_s = -1.0
            return False
        fails.extend("reference: " + f for f in invariants(tools, ref))
        return True

    stats = collections.Counter()
    landed = collections.Counter()
    found = collections.Counter()
    latency = []
    kills = 0
    while True:
        stats["rounds"] += 1
        work = os.path.join(tmp, "%s-run%d" % (layout, stats["rounds"]))
        job = Job(tools, args, layout, work, config, max_restarts=args.kills + 3)
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        round_kills = 0
        old = set()
        group = job.wait_group(old, deadline)
        while group is not None and kills < args.kills:
            head0 = ledger_head(work)[0]
            at_startup = rng.random() < STARTUP_SHARE
            delay = rng.uniform(*KILL_DELAY_S)
            victim_rank = rng.randrange(RANKS)
            if not at_startup:
                # From the group's first ledger event (reconciliation's, or run_started).
                while ledger_head(work)[0] <= head0 and set(group) <= set(job.ranks()):
                    time.sleep(0.01)
            time.sleep(delay)
            if not set(group) <= set(job.ranks()):
                # The group ended by itself (finished, or a rank failed): no kill.
                old |= set(group)
                group = job.wait_group(old, deadline)
                continue
            seq, kind = ledger_head(work)
            pid = next(p for p, r in group.items() if r == victim_rank)
            if has_exited(pid):
                # The victim just finished (its job's end): no kill, the group ends by itself.
                old |= set(group)
                group = job.wait_group(old, deadline)
                continue
            os.kill(pid, signal.SIGKILL)
            t_kill = time.monotonic()
            kills += 1
            round_kills += 1
            landed["start-up (no event yet)" if seq <= head0 else "after " + kind] += 1
            old |= set(group)
            group = job.wait_group(old, deadline)
            if group is not None:
                latency.append(time.monotonic() - t_kill)
        rc = job.wait(deadline)
        restarts = max(0, job.attempts() - 1)
        stats["restarts"] += restarts
        name = os.path.basename(work)
        if rc != 0:
            fails.append("%s: torchrun exited %s (%d kills, %d restarts): %s"
                         % (name, rc, round_kills, restarts, job.error_lines()))
            break
        if restarts != round_kills:
            fails.append("%s: %d restarts for %d kills; the ranks' errors: %s"
                         % (name, restarts, round_kills, job.error_lines()))
        found.update(findings(work))
        fails += ["%s: %s" % (name, f) for f in invariants(tools, work)]
        if not reference_done():
            break
        fails += ["%s: %s" % (name, f) for f in compare(tools, ref, work)]
        if kills >= args.kills:
            break
    reference_done()
    stats["kills"] = kills
    stats["ref_s"] = ref_s
    stats["wall_s"] = time.monotonic() - t0
    stats["landed"] = dict(landed)
    stats["recovered"] = dict(found)
    stats["kill_to_group_s"] = sum(latency) / len(latency) if latency else None
    return fails, stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bin_dir")
    ap.add_argument("--kills", type=int, default=10, help="SIGKILLs per layout (default 10)")
    ap.add_argument("--seed", type=int, default=14, help="seed of the kill draws and of the job")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--iter-delay-ms", type=int, default=5)
    ap.add_argument("--monitor-interval", type=float, default=0.5,
                    help="torchrun --monitor_interval (its default: 5)")
    ap.add_argument("--keep", action="store_true", help="keep the work dirs")
    ap.add_argument("--tmp", help="parent of the work dirs (default: a new temp dir)")
    args = ap.parse_args()
    tools = Tools(os.path.abspath(args.bin_dir))
    layouts = [x for x in args.layouts.split(",") if x]
    for x in layouts:
        if x not in LAYOUTS:
            sys.exit("dist_torture_test.py: unknown layout %r" % x)
    tmp = tempfile.mkdtemp(prefix="dist-torture-", dir=args.tmp)
    print("dist_torture_test: seed %d, %d kills per layout, %d iters, --iter-delay-ms %d, in %s"
          % (args.seed, args.kills, args.iters, args.iter_delay_ms, tmp), flush=True)
    failed = False
    t0 = time.monotonic()
    for i, layout in enumerate(layouts):
        rng = random.Random(args.seed * 1000 + i)
        fails, s = torture_layout(tools, args, layout, tmp, rng)
        if s:
            print("%-7s  %d kill(s), %d restart(s), %d round(s) in %.1f s (the reference beside "
                  "them: %.1f s); a kill to the next group: %.2f s on average"
                  % (layout, s["kills"], s["restarts"], s["rounds"], s["wall_s"], s["ref_s"],
                     s["kill_to_group_s"] or 0), flush=True)
            print("         kills landed: %s" % json.dumps(dict(sorted(s["landed"].items()))))
            print("         recovered findings: %s" % json.dumps(dict(sorted(s["recovered"].items()))),
                  flush=True)
        for f in fails:
            print("FAIL %s: %s" % (layout, f), flush=True)
        failed |= bool(fails)
    print("dist_torture_test: %s in %.1f s" % ("FAILED" if failed else "ok", time.monotonic() - t0))
    if args.keep or failed:
        print("work dirs kept in %s" % tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
