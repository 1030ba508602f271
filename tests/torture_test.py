#!/usr/bin/python3
"""The kill -9 torture test (docs/crash-safety.md, "The torture test").

    torture_test.py --child TORTURE_CHILD --ckptledger CKPTLEDGER --scenario SCENARIO.json
                    [--kills N] [--seed S] [--trials T] [--slow-ms MS] [--ballast-mib N]
                    [--keep] [--tmp DIR]

A trial:
  1. runs the job (torture_child: auto-resume always on, async writer) once without interruption in
     root A: the reference; its timing is what the kill delays are drawn over (see below);
  2. in a fresh root B, starts the job, SIGKILLs it after a random delay (random.Random(seed)),
     restarts it, and repeats until it exits 0 -- a round. Kills land in
     process start-up, resume, train steps, background writes, renames, prunes, publishing and
     ledger transactions; a child killed before it made any progress still counts. When a round
     completes before N kills were injected, the next round starts in a fresh root B; after the
     N-th kill the child is left to finish;
  3. compares every round's root B with A:
     - the same set of files (relative paths, ledger files excluded; the published files' names,
       which are the SHA-256 of their bytes, compared exactly);
     - every .pth deep-equal to A's: key sets, meta (epoch, iter, ...), message_hub runtime_info
       (paths taken relative to the root), param_schedulers, and every tensor torch.equal --
       in particular the final regular checkpoint's model parameters and optimizer state;
     - last_checkpoint's target (relative), the ledger's replayed state (`ckptledger state
       --json`: message hub, best scores and files, keep_ckpt_ids, live files), all relative;
     - no *.ckptledger-tmp file anywhere; `ckptledger verify WORK_DIR` exits 0 (hash chain, and
       every live file's size and SHA-256).
Prints a summary (trials, rounds, kills, restarts, where the kills landed, failures, wall time)
and exits 1 on any difference. --trials T repeats the trial with seeds S, S+1, ..., S+T-1.

Kill timing: the child prints "torture_child: ready" once libtorch is loaded and the hook is built,
just before the loop (and its resume) starts. 15% of the kills are drawn uniformly over the
reference's start-up (before that line); the rest uniformly over the work the job has left after
it: the reference's span from the ready line to its run_finished event, less the part before the
newest regular checkpoint the killed run's ledger holds, plus a resume allowance. So the kills
spread over resume and reconciliation, train steps, background writes and renames, prunes, best
saves, publishing and ledger transactions, whatever point the job has reached. Once the ledger
holds run_finished the next start runs to its end. Where a kill landed is read back from the
ledger after the kill (read-only): "start-up", "resume (no event yet)" when the process appended
nothing, else the kind of the last event it appended; "+tmp" when a temp file was left beside a
checkpoint.
"""

import argparse
import collections
import json
import math
import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

LEDGER_NAME = "ckptledger.sqlite"
LEDGER_SUFFIXES = ("", "-wal", "-shm", "-journal")
TEMP_SUFFIX = ".ckptledger-tmp"
MAX_DIFFS_PER_ROUND = 20
READY = b"torture_child: ready"
# Share of the kills aimed at process start-up (library loading, before the ready line); the rest
# land uniformly over the span after it that the uninterrupted job needs (resume, train, saves).
STARTUP_SHARE = 0.15
RESUME_S = 0.015  # what a resume adds to the work left (open, reconcile, verify, load)


# ---- the job -------------------------------------------------------------------------------------

class Job:
    def __init__(self, args):
        self.child = os.path.abspath(args.child)
        self.ckptledger = os.path.abspath(args.ckptledger)
        self.scenario = os.path.abspath(args.scenario)
        self.slow_ms = args.slow_ms
        self.ballast_mib = args.ballast_mib
        with open(self.scenario, encoding="utf-8") as f:
            sc = json.load(f)
        self.work_dir_rel = sc.get("work_dir", "work_dirs/exp")

    def argv(self, root):
        a = [self.child, self.scenario, "--root", root]
        if self.slow_ms:
            a += ["--slow-ms", str(self.slow_ms)]
        if self.ballast_mib:
            a += ["--ballast-mib", str(self.ballast_mib)]
        return a

    def start(self, root, log):
        return subprocess.Popen(self.argv(root), stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL)

    def work_dir(self, root):
        return os.path.join(root, self.work_dir_rel)


def wait_ready(p, timeout):
    """Seconds until the child printed its ready line; None when it exited (or hung) first."""
    t0 = time.monotonic()
    r, _, _ = select.select([p.stdout], [], [], timeout)
    line = p.stdout.readline() if r else b""
    return time.monotonic() - t0 if line.startswith(READY) else None


def finish(p, timeout):
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        rc = "timeout"
    p.stdout.close()
    return rc


class Span:
    """The reference's timing: start-up (start -> ready line), and from the ready line, when each
    epoch's regular checkpoint was committed and when run_finished was recorded."""

    def __init__(self, startup_s, work_s, committed_at):
        self.startup_s = startup_s
        self.work_s = work_s
        self.committed_at = committed_at  # epoch -> seconds after the ready line

    def remaining(self, epoch):
        """What a job resumed after `epoch` has left to do (plus its resume), in seconds."""
        done = self.committed_at.get(epoch, 0.0) if epoch is not None else 0.0
        return max(0.005, self.work_s - done) + RESUME_S


def ledger_rows(work_dir, sql):
    con = sqlite3.connect(f"file:{os.path.join(work_dir, LEDGER_NAME)}?mode=ro", uri=True,
                          timeout=5)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


REGULAR_COMMITS = ("SELECT epoch, ts_us FROM events WHERE kind = 'save_committed' AND "
                   "json_extract(detail, '$.role') = 'regular'")


def run_reference(job, root, log_path, timeout):
    """Runs the job uninterrupted: (exit status, Span)."""
    with open(log_path, "ab") as log:
        t0 = time.monotonic()
        p = job.start(root, log)
        s = wait_ready(p, timeout)
        t1, wall1 = time.monotonic(), time.time()
        rc = finish(p, timeout)
        work = time.monotonic() - t1
    committed = {}
    try:
        wd = job.work_dir(root)
        (ts,), = ledger_rows(wd, "SELECT max(ts_us) FROM events WHERE kind = 'run_finished'")
        if ts is not None:  # the exit after run_finished is not the hook's work
            work = min(work, max(0.01, (ts / 1e6 - wall1) * 1.1))
        for epoch, ts in ledger_rows(wd, REGULAR_COMMITS):
            committed[epoch] = max(committed.get(epoch, 0.0), ts / 1e6 - wall1)
    except sqlite3.Error:
        pass
    return rc, Span(s if s is not None else t1 - t0, work, committed)


def tail(path, n=2000):
    try:
        with open(path, "rb") as f:
            data = f.read()
        return data[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


# ---- reading a root ------------------------------------------------------------------------------

def is_ledger_file(name):
    return any(name == LEDGER_NAME + s for s in LEDGER_SUFFIXES)


def list_files(root):
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            if is_ledger_file(f):
                continue
            out.append(os.path.relpath(os.path.join(d, f), root))
    return sorted(out)


def temp_files(root):
    return [f for f in list_files(root) if TEMP_SUFFIX in os.path.basename(f)]


def ledger_events(work_dir):
    """(count, last kind) of the ledger's events, read-only; (None, why) when unreadable."""
    path = os.path.join(work_dir, LEDGER_NAME)
    if not os.path.exists(path):
        return 0, None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT count(*), (SELECT kind FROM events ORDER BY seq DESC LIMIT 1)"
                              " FROM events").fetchone()
        finally:
            con.close()
        return row[0], row[1]
    except sqlite3.Error as e:
        return None, f"unreadable: {e}"


def relativize(value, root):
    """Strings naming paths under `root` become $ROOT/...; containers recursively."""
    if isinstance(value, str):
        if value == root or value.startswith(root + os.sep):
            return "$ROOT" + value[len(root):]
        return value
    if isinstance(value, dict):
        return {relativize(k, root): relativize(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(relativize(v, root) for v in value)
    return value


def deep_diff(a, b, root_a, root_b, where, out, limit=8):
    """Appends to `out` where a (under root_a) and b (under root_b) differ; tensors bitwise."""
    if len(out) >= limit:
        return
    if torch is not None and isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            out.append(f"{where}: tensor vs {type(b).__name__}")
        elif a.dtype != b.dtype or a.shape != b.shape:
            out.append(f"{where}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        elif not torch.equal(a, b):
            out.append(f"{where}: tensor values differ (max |a-b| = "
                       f"{(a.double() - b.double()).abs().max().item():.3g})")
        return
    if isinstance(a, dict):
        if not isinstance(b, dict):
            out.append(f"{where}: dict vs {type(b).__name__}")
            return
        ka, kb = list(a.keys()), list(b.keys())
        if set(ka) != set(kb):
            out.append(f"{where}: keys {sorted(map(str, ka))} vs {sorted(map(str, kb))}")
            return
        for k in ka:
            deep_diff(a[k], b[k], root_a, root_b, f"{where}[{k!r}]", out, limit)
        return
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            out.append(f"{where}: {relativize(a, root_a)!r} vs {relativize(b, root_b)!r}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            deep_diff(x, y, root_a, root_b, f"{where}[{i}]", out, limit)
        return
    ra, rb = relativize(a, root_a), relativize(b, root_b)
    if isinstance(ra, float) and isinstance(rb, float) and math.isnan(ra) and math.isnan(rb):
        return
    if type(ra) is not type(rb) or ra != rb:
        out.append(f"{where}: {ra!r} vs {rb!r}")


def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def ledger_state(job, root):
    p = subprocess.run([job.ckptledger, "state", job.work_dir(root), "--json"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    if p.returncode != 0:
        return None, f"ckptledger state exited {p.returncode}: {p.stderr.strip()[-500:]}"
    s = json.loads(p.stdout)
    live = sorted((relativize(f["path"], root), f["role"], f["step"], f["epoch"], f["iter"])
                  for f in s.get("live", []))
    return {"hub": relativize(s.get("hub"), root),
            "best": relativize(s.get("best"), root),
            "auto_key": s.get("auto_key"),
            "keep_ckpt_ids": relativize(s.get("keep_ckpt_ids"), root),
            "last_ckpt": relativize(s.get("last_ckpt"), root),
            "live": [list(x) for x in live]}, None


def verify(job, root):
    p = subprocess.run([job.ckptledger, "verify", job.work_dir(root)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=120)
    return p.returncode, p.stdout.strip()[-800:]


# ---- comparing B with A --------------------------------------------------------------------------

def compare(job, root_a, root_b):
    diffs = []
    fa, fb = list_files(root_a), list_files(root_b)
    if fa != fb:
        only_a = sorted(set(fa) - set(fb))
        only_b = sorted(set(fb) - set(fa))
        diffs.append(f"files: only in the reference {only_a}, only in the killed run {only_b}")
    for t in temp_files(root_b):
        diffs.append(f"temp file left: {t}")

    # Every checkpoint both have: deep equality (tensors bitwise, paths relative).
    for rel in sorted(set(fa) & set(fb)):
        if not rel.endswith(".pth"):
            continue
        try:
            ca = torch.load(os.path.join(root_a, rel), map_location="cpu")
            cb = torch.load(os.path.join(root_b, rel), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - a file that does not load is a difference
            diffs.append(f"{rel}: torch.load failed: {type(e).__name__}: {e}")
            continue
        d = []
        deep_diff(ca, cb, root_a, root_b, rel, d)
        diffs.extend(d)

    # last_checkpoint and the final regular checkpoint.
    la = read_text(os.path.join(job.work_dir(root_a), "last_checkpoint"))
    lb = read_text(os.path.join(job.work_dir(root_b), "last_checkpoint"))
    if relativize(la, root_a) != relativize(lb, root_b):
        diffs.append(f"last_checkpoint: {relativize(la, root_a)!r} vs {relativize(lb, root_b)!r}")
    if lb is None or not os.path.isfile(lb):
        diffs.append(f"last_checkpoint target missing in the killed run: {lb!r}")
    else:
        # The deep comparison above covered the final regular checkpoint; make sure it was not
        # vacuous: weights and momentum buffers are there to compare.
        c = torch.load(lb, map_location="cpu")
        n_w = sum(isinstance(t, torch.Tensor) for t in c.get("state_dict", {}).values())
        n_m = sum(isinstance(v.get("momentum_buffer"), torch.Tensor)
                  for v in c.get("optimizer", {}).get("state", {}).values())
        if n_w == 0 or n_m == 0:
            diffs.append(f"final checkpoint {relativize(lb, root_b)}: {n_w} weight tensors, "
                         f"{n_m} momentum buffers: nothing to compare bitwise")

    # The ledger's replayed state: best scores and files, hub, live files.
    sa, ea = ledger_state(job, root_a)
    sb, eb = ledger_state(job, root_b)
    if ea or eb:
        diffs.extend(x for x in (ea and f"reference: {ea}", eb and f"killed run: {eb}") if x)
    else:
        for k in sa:
            if sa[k] != sb[k]:
                diffs.append(f"ledger state {k}: {sa[k]!r} vs {sb[k]!r}")

    rc, text = verify(job, root_b)
    if rc != 0:
        diffs.append(f"ckptledger verify exited {rc}: {text}")
    return diffs


# ---- a trial -------------------------------------------------------------------------------------

class Stats:
    def __init__(self):
        self.trials = 0
        self.rounds = 0
        self.kills = 0
        self.restarts = 0
        self.starts = 0
        self.landed = collections.Counter()
        self.failures = []  # (seed, round, [kills], [diffs])
        self.child_s = []


def progress(job, root, span):
    """(finished, seconds of work left) of the job in `root`, read from its ledger."""
    try:
        wd = job.work_dir(root)
        if not os.path.exists(os.path.join(wd, LEDGER_NAME)):
            return False, span.remaining(None)
        last = ledger_rows(wd, "SELECT kind FROM events ORDER BY seq DESC LIMIT 1")
        if last and last[0][0] == "run_finished":
            return True, 0.0
        epochs = [e for e, _ in ledger_rows(wd, REGULAR_COMMITS) if e is not None]
        return False, span.remaining(max(epochs) if epochs else None)
    except sqlite3.Error:
        return False, span.remaining(None)


def classify(job, root, events_before):
    n, last = ledger_events(job.work_dir(root))
    tmp = "+tmp" if temp_files(root) else ""
    if n is None:
        if "no such table" in (last or ""):
            return f"ledger being created{tmp}", events_before
        return f"ledger {last}{tmp}", events_before
    if n == events_before:
        return f"resume (no event yet){tmp}", n
    return f"{last}{tmp}", n


def start_once(job, root, log, rng, kill, span, left_s, timeout):
    """One start of the child. Returns (exit status, None) when it ended by itself, or
    (None, (where, delay_ms)) when we killed it."""
    # Draw both numbers every time: the sequence depends on the seed only.
    in_startup = rng.random() < STARTUP_SHARE
    u = rng.random()
    p = job.start(root, log)
    if not kill:
        return finish(p, timeout), None
    if in_startup:
        delay = u * span.startup_s
        where = "start-up"
    else:
        if wait_ready(p, timeout) is None:
            return finish(p, timeout), None
        delay = u * left_s
        where = "after ready"
    try:
        rc = p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        return None, (where, round(delay * 1000, 1))
    p.stdout.close()
    return rc, None


def run_round(job, args, rng, trial_dir, r, root_a, span, kills_left, stats, seed):
    root = os.path.join(trial_dir, f"B{r}")
    os.makedirs(root)
    log_path = os.path.join(trial_dir, f"B{r}.log")
    kills = []  # (delay_ms, where the delay was counted from, what the ledger says it landed after)
    events = 0
    left_s = span.remaining(None)
    finished = False  # the ledger holds run_finished: the next start just runs to its end
    timeout = max(60.0, 20 * (span.startup_s + span.work_s))
    while True:
        with open(log_path, "ab") as log:
            log.write(f"=== start {stats.starts} (kills so far {len(kills)})\n".encode())
            log.flush()
            stats.starts += 1
            kill = len(kills) < kills_left and not finished
            rc, killed = start_once(job, root, log, rng, kill, span, left_s, timeout)
        if killed is None:
            break
        if killed[0] == "start-up":
            landed = "start-up" + ("+tmp" if temp_files(root) else "")
        else:
            landed, events = classify(job, root, events)
        kills.append((killed[1], killed[0], landed))
        stats.landed[landed] += 1
        stats.restarts += 1
        finished, left_s = progress(job, root, span)
    stats.rounds += 1
    stats.kills += len(kills)
    if rc != 0:
        diffs = [f"child ended with {rc} (not killed by us) after {len(kills)} kills; "
                 f"log tail:\n{tail(log_path)}"]
    else:
        diffs = compare(job, root_a, root)
    if diffs:
        stats.failures.append((seed, r, kills, diffs[:MAX_DIFFS_PER_ROUND], root))
    elif not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    if args.verbose:
        print(f"  seed {seed} round {r}: {len(kills)} kills "
              f"{[k[2] for k in kills]} -> {'FAIL' if diffs else 'ok'}", flush=True)
    return len(kills)


def run_trial(job, args, seed, base, stats):
    rng = random.Random(seed)
    trial_dir = os.path.join(base, f"seed-{seed}")
    os.makedirs(trial_dir)
    root_a = os.path.join(trial_dir, "A")
    os.makedirs(root_a)
    rc, span = run_reference(job, root_a, os.path.join(trial_dir, "A.log"), 600)
    stats.child_s.append((span.startup_s, span.work_s))
    if rc != 0:
        stats.failures.append((seed, "reference", [], [f"uninterrupted run ended with {rc}: "
                                                       f"{tail(os.path.join(trial_dir, 'A.log'))}"],
                               root_a))
        return
    rc, text = verify(job, root_a)
    if rc != 0:
        stats.failures.append((seed, "reference", [], [f"verify of the reference: {text}"], root_a))
    if temp_files(root_a):
        stats.failures.append((seed, "reference", [], [f"temp files: {temp_files(root_a)}"], root_a))
    injected, r = 0, 0
    while injected < args.kills or r == 0:
        injected += run_round(job, args, rng, trial_dir, r, root_a, span, args.kills - injected,
                              stats, seed)
        r += 1
        if r > 10 * args.kills + 10:  # every delay overshot the job: cannot happen with [0, T)
            stats.failures.append((seed, r, [], ["no kill landed in 10*N rounds"], trial_dir))
            break
    stats.trials += 1
    if not args.keep and not any(f[0] == seed for f in stats.failures):
        shutil.rmtree(trial_dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", required=True)
    ap.add_argument("--ckptledger", required=True)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--kills", type=int, default=25, help="kills per trial (default 25)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--slow-ms", type=int, default=0, help="sleep per train step in the child")
    ap.add_argument("--ballast-mib", type=int, default=0,
                    help="a constant N MiB tensor in every checkpoint (large-file write path)")
    ap.add_argument("--tmp", help="where the roots go (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep every root (failing ones always are)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if torch is None:
        print("torture_test: python3-torch is required (torch.load of the checkpoints)")
        return 2
    torch.set_num_threads(1)
    job = Job(args)
    base = tempfile.mkdtemp(prefix="ckptledger-torture-", dir=args.tmp)
    stats = Stats()
    t0 = time.monotonic()
    for t in range(args.trials):
        seed = args.seed + t
        run_trial(job, args, seed, base, stats)
    wall = time.monotonic() - t0

    print(f"torture: {stats.trials} trial(s) (seeds {args.seed}..{args.seed + args.trials - 1}), "
          f"{stats.rounds} round(s), {stats.kills} kills, {stats.restarts} restarts, "
          f"{stats.starts} child starts, {len(stats.failures)} failure(s), wall {wall:.1f} s")
    if stats.child_s:
        su = [x[0] for x in stats.child_s]
        wo = [x[1] for x in stats.child_s]
        print(f"  uninterrupted job: start-up {min(su) * 1000:.0f}-{max(su) * 1000:.0f} ms, then "
              f"{min(wo) * 1000:.0f}-{max(wo) * 1000:.0f} ms of resume/train/save/publish; kill "
              f"delays uniform over the start-up ({STARTUP_SHARE:.0%} of kills) or the span after "
              f"it{'; slow-ms ' + str(args.slow_ms) if args.slow_ms else ''}")
    print("  kills landed after (last ledger event of the killed process): " +
          ", ".join(f"{k} {v}" for k, v in sorted(stats.landed.items(), key=lambda x: -x[1])))
    for seed, r, kills, diffs, where in stats.failures:
        print(f"FAIL seed {seed} round {r} ({where}); kills (delay ms, counted from, landed "
              f"after): {kills}")
        for d in diffs:
            print(f"    {d}")
    if not stats.failures and not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    elif stats.failures or args.keep:
        print(f"  roots kept under {base}")
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
