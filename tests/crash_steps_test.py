#!/usr/bin/python3
"""Crash at every durable step (docs/crash-safety.md, "Durable steps").

    crash_steps_test.py --child TORTURE_CHILD --ckptledger CKPTLEDGER --scenario SCENARIO.json
                        [--jobs J] [--every S] [--limit N] [--ballast-mib N] [--keep] [--tmp DIR] [-v]

torture_test.py kills the job at random moments; this test kills it just before each of its durable
operations in turn, the way SQLite tests its journal. What a process crash leaves on disk changes only
at a durable operation, so the N crash points of a job cover every state a crash of it can leave (for
the interleaving of its threads that each run takes).

torture_child counts its durable operations in one process-wide counter, in the order they happen:
through the hook's FileSystem seam, an open with O_CREAT, write, fdatasync, fsync, rename and unlink;
through a SQLite VFS shim, the first write to a file after its previous sync (a ledger transaction
begins), every sync, truncate and delete. `--count-ops FILE` lists them at exit ("N OP PATH" lines);
`--crash-at K` makes the child print "torture_child: crash at K: OP PATH" on stderr and SIGKILL
itself just before the K-th.

  1. the reference: the job runs uninterrupted with --count-ops in root A and must exit 0 with
     `ckptledger verify` clean, no temp file and no `recovered` event; N is its number of operations;
  2. for K = 1, 1+S, 1+2S, ... <= N (--every S), each in a fresh root, --jobs at a time:
     a. the job runs with --crash-at K and must die of SIGKILL, having printed its crash line. The
        async writer's threads interleave differently from run to run: a run that does fewer than K
        operations exits 0 ("finished before K") and is checked as an uninterrupted run (d, e, no
        restart). Any other exit is a failure;
     b. the ledger is read as the restart will find it (read-only; from a scratch copy when a hot
        rollback journal makes a read-only open refuse it): the newest committed regular checkpoint
        and the last seq. No ledger, or no events table yet, means nothing was committed;
     c. the job is restarted without --crash-at and must exit 0;
     d. the restart's first `resumed` event (after that seq) loaded a checkpoint whose (epoch, iter)
        is no older than the newest committed regular one: a commit is never lost. No `recovered`
        event anywhere says `corrupt` or `lost`: a crash damages no committed byte, so such a
        finding would be reconciliation misreading what a crash leaves;
     e. the root equals A as torture_test.py compares them (compare): the same files, every .pth
        deep-equal (tensors bitwise), last_checkpoint, the ledger's replayed state, no temp file,
        and `ckptledger verify WORK_DIR` exits 0.
Prints N, the operations by kind, the kills by the operation they preceded, the reconciliation findings
the restarts recorded, and every failure with its K, its operation and its differences; exits 1 on any
failure. A root is removed once checked unless --keep; a failing one is kept and named.
"""

import argparse
import collections
import concurrent.futures
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torture_test as tt  # noqa: E402  (Job, compare, ledger_rows, verify, temp_files, ...)

CRASH_LINE = re.compile(rb"^torture_child: crash at (\d+): (\S+) ?(.*)$", re.M)
NEWEST_REGULAR = ("SELECT seq, epoch, iter, path FROM events WHERE kind = 'save_committed' AND "
                  "coalesce(json_extract(detail, '$.role'), 'regular') = 'regular' "
                  "ORDER BY seq DESC LIMIT 1")
LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM events"
FINDINGS = ("SELECT json_extract(detail, '$.finding'), count(*) FROM events "
            "WHERE kind = 'recovered' GROUP BY 1")
MAX_DIFFS = 20
print_lock = threading.Lock()


def say(*a):
    with print_lock:
        print(*a, flush=True)


def run_child(job, root, extra, log_path, timeout):
    """The child's exit status (negative: killed by that signal), or "timeout"."""
    with open(log_path, "ab") as log:
        log.write(f"=== {' '.join(extra) or 'restart'}\n".encode())
        log.flush()
        try:
            return subprocess.run(job.argv(root) + extra, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=log, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return "timeout"


def committed_at_kill(job, root, scratch):
    """((seq, epoch, iter, path) of the newest committed regular checkpoint or None, last seq), as
    the restart will find them. Raises sqlite3.Error when the ledger cannot be read at all."""
    wd = job.work_dir(root)
    if not os.path.exists(os.path.join(wd, tt.LEDGER_NAME)):
        return None, 0

    def read(d):
        try:
            rows = tt.ledger_rows(d, NEWEST_REGULAR)
            (last,), = tt.ledger_rows(d, LAST_SEQ)
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # killed while the ledger was being created
                return None, 0
            raise
        return (rows[0] if rows else None), last

    try:
        return read(wd)
    except sqlite3.Error:
        # A hot rollback journal (killed while the ledger was created) refuses a read-only open:
        # let SQLite roll it back (or recover the WAL) in a copy, never in the root.
        os.makedirs(scratch, exist_ok=True)
        for s in ("", "-wal", "-journal"):
            if os.path.exists(os.path.join(wd, tt.LEDGER_NAME + s)):
                shutil.copyfile(os.path.join(wd, tt.LEDGER_NAME + s),
                                os.path.join(scratch, tt.LEDGER_NAME + s))
        con = sqlite3.connect(os.path.join(scratch, tt.LEDGER_NAME))
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchall()
        finally:
            con.close()
        return read(scratch)


def check_after(job, root, root_a, committed, last_seq, findings):
    """Steps d and e on a root whose job completed; the differences found."""
    diffs = []
    wd = job.work_dir(root)
    try:
        for finding, n in tt.ledger_rows(wd, FINDINGS):
            findings[finding] += n
        for bad in ("corrupt", "lost"):
            if findings[bad]:
                diffs.append(f"{findings[bad]} `recovered` event(s) with finding {bad}")
        if committed is not None:
            _, ce, ci, cp = committed
            rows = tt.ledger_rows(wd, "SELECT epoch, iter, path FROM events WHERE kind = 'resumed'"
                                  f" AND seq > {int(last_seq)} ORDER BY seq LIMIT 1")
            if not rows:
                diffs.append(f"the restart did not resume, though {tt.relativize(cp, root)} "
                             f"(epoch {ce}, iter {ci}) was committed at the kill")
            elif None in rows[0][:2] or rows[0][:2] < (ce, ci):
                e, i, p = rows[0]
                diffs.append(f"the restart resumed from {tt.relativize(p, root)} (epoch {e}, iter "
                             f"{i}), older than {tt.relativize(cp, root)} (epoch {ce}, iter {ci}), "
                             f"committed at the kill")
    except sqlite3.Error as e:
        diffs.append(f"ledger unreadable after the run: {e}")
    return diffs + tt.compare(job, root_a, root)


def check_k(job, args, base, root_a, k, timeout):
    d = os.path.join(base, f"k{k:05d}")
    root = os.path.join(d, "root")
    os.makedirs(root)
    log = os.path.join(d, "child.log")
    r = {"k": k, "outcome": "failed", "op": None, "diffs": [], "findings": collections.Counter(),
         "dir": d}
    try:
        rc = run_child(job, root, ["--crash-at", str(k)], log, timeout)
        with open(log, "rb") as f:
            lines = CRASH_LINE.findall(f.read())
        if lines:
            n, op, path = lines[-1]
            r["op"] = (op.decode(), tt.relativize(path.decode("utf-8", "replace"), root))
        committed, last_seq = None, None
        if rc == -signal.SIGKILL:
            r["outcome"] = "killed"
            if not lines or int(lines[-1][0]) != k:
                r["diffs"].append(f"killed without the line 'torture_child: crash at {k}: ...'")
            try:
                committed, last_seq = committed_at_kill(job, root, os.path.join(d, "ledger-copy"))
            except sqlite3.Error as e:
                r["diffs"].append(f"ledger unreadable after the kill: {e}")
            rc = run_child(job, root, [], log, timeout)
            if rc != 0:
                r["diffs"].append(f"the restart exited {rc}; log tail:\n{tt.tail(log)}")
        elif rc == 0:
            r["outcome"] = "finished"
        else:
            r["diffs"].append(f"--crash-at {k} exited {rc} (not SIGKILL, not 0); log tail:\n"
                              f"{tt.tail(log)}")
        if rc == 0:
            r["diffs"] += check_after(job, root, root_a, committed, last_seq, r["findings"])
    except Exception as e:  # noqa: BLE001 - a harness error fails this K, not the whole run
        r["diffs"].append(f"harness error: {type(e).__name__}: {e}")
    r["diffs"] = r["diffs"][:MAX_DIFFS]
    if not r["diffs"] and not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    if r["diffs"]:
        say(f"FAIL K={k} ({r['outcome']}): kept {d}")
    elif args.verbose:
        say(f"  K={k}: {r['outcome']}" + (f" before {r['op'][0]} {r['op'][1]}" if r["op"] else "")
            + (f"; recovered {dict(r['findings'])}" if r["findings"] else ""))
    return r


def reference(job, ref_dir):
    """(operations [(op, path)], wall seconds, problems) of the uninterrupted run in ref_dir/root."""
    root_a = os.path.join(ref_dir, "root")
    os.makedirs(root_a)
    ops_path, log = os.path.join(ref_dir, "ops.txt"), os.path.join(ref_dir, "child.log")
    t0 = time.monotonic()
    rc = run_child(job, root_a, ["--count-ops", ops_path], log, 600)
    wall = time.monotonic() - t0
    if rc != 0:
        return [], wall, [f"the uninterrupted run exited {rc}; log tail:\n{tt.tail(log)}"]
    ops, problems = [], []
    with open(ops_path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) < 2 or parts[0] != str(i):
                problems.append(f"{ops_path}:{i}: expected '{i} OP PATH', got {line.strip()!r}")
                break
            ops.append((parts[1], tt.relativize(parts[2] if len(parts) > 2 else "", root_a)))
    if not ops:
        problems.append(f"{ops_path}: no durable operation listed")
    rc, text = tt.verify(job, root_a)
    if rc != 0:
        problems.append(f"verify of the reference exited {rc}: {text}")
    if tt.temp_files(root_a):
        problems.append(f"temp files in the reference: {tt.temp_files(root_a)}")
    found = tt.ledger_rows(job.work_dir(root_a), FINDINGS)
    if found:
        problems.append(f"`recovered` events in the uninterrupted run: {found}")
    return ops, wall, problems


def counts(counter):
    return ", ".join(f"{k} {v}" for k, v in counter.most_common()) or "none"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", required=True)
    ap.add_argument("--ckptledger", required=True)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--jobs", type=int, default=2, help="crash points run at a time (default 2)")
    ap.add_argument("--every", type=int, default=1, help="K = 1, 1+S, 1+2S, ... (default 1)")
    ap.add_argument("--limit", type=int, help="run at most N crash points (the first N)")
    ap.add_argument("--ballast-mib", type=int, default=0,
                    help="a constant N MiB tensor in every checkpoint (large-file write path)")
    ap.add_argument("--tmp", help="where the roots go (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep every root (failing ones always are)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    args.slow_ms = 0  # tt.Job's option; kills here are counted in operations, not time
    if args.jobs < 1 or args.every < 1 or (args.limit is not None and args.limit < 1):
        ap.error("--jobs, --every and --limit take N >= 1")
    if tt.torch is None:
        print("crash_steps_test: python3-torch is required (torch.load of the checkpoints)")
        return 2
    tt.torch.set_num_threads(1)
    job = tt.Job(args)
    # Canonical: the child canonicalises --root, and compare() relativises paths by prefix.
    base = os.path.realpath(tempfile.mkdtemp(prefix="ckptledger-crash-steps-", dir=args.tmp))
    t0 = time.monotonic()
    ops, ref_wall, problems = reference(job, os.path.join(base, "ref"))
    if problems:
        for p in problems:
            print(f"FAIL reference: {p}")
        print(f"  kept under {base}")
        return 1
    n = len(ops)
    print(f"crash steps: {n} durable operations in the uninterrupted job ({ref_wall:.1f} s): "
          f"{counts(collections.Counter(op for op, _ in ops))}", flush=True)
    ks = list(range(1, n + 1, args.every))[:args.limit]
    timeout = max(120.0, 10 * ref_wall)
    root_a = os.path.join(base, "ref", "root")
    results = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as ex:
        futures = [ex.submit(check_k, job, args, base, root_a, k, timeout) for k in ks]
        for f in concurrent.futures.as_completed(futures):
            results.append(f.result())
            if not args.verbose and len(results) % max(1, len(ks) // 10) == 0:
                say(f"  {len(results)}/{len(ks)} crash points checked")
    results.sort(key=lambda r: r["k"])
    wall = time.monotonic() - t0

    outcomes = collections.Counter(r["outcome"] for r in results)
    killed = [r for r in results if r["outcome"] == "killed"]
    same = sum(1 for r in killed if r["op"] == ops[r["k"] - 1])
    findings, runs_with = collections.Counter(), collections.Counter()
    for r in results:
        findings.update(r["findings"])
        runs_with.update(r["findings"].keys())
    failures = [r for r in results if r["diffs"]]
    print(f"crash steps: N {n}, {len(ks)} crash point(s) run (every {args.every}"
          f"{', limit ' + str(args.limit) if args.limit else ''}, {args.jobs} at a time): "
          f"{outcomes['killed']} killed, {outcomes['finished']} finished before K, "
          f"{len(failures)} failure(s); wall {wall:.1f} s")
    print(f"  kills before: {counts(collections.Counter(r['op'][0] for r in killed if r['op']))}")
    print(f"  the op killed before was the reference's K-th in {same} of {len(killed)} kills "
          f"(the others: the threads interleaved otherwise)")
    print("  recovered findings after the restarts (events, in how many runs): " +
          (", ".join(f"{k} {v} ({runs_with[k]})" for k, v in findings.most_common()) or "none"))
    for r in failures:
        print(f"FAIL K={r['k']} ({r['outcome']}; before {' '.join(r['op']) if r['op'] else '-'}; "
              f"the reference's K-th: {' '.join(ops[r['k'] - 1])}), kept {r['dir']}")
        for d in r["diffs"]:
            print(f"    {d}")
    # Not vacuous: every operation was a crash point, so some kill fell between a replacement's
    # rename and its commit, and its restart rolled the save forward.
    vacuous = []
    prepared = tt.ledger_rows(job.work_dir(root_a),
                              "SELECT count(*) FROM events WHERE kind = 'save_prepared'")[0][0]
    if args.every == 1 and args.limit is None and prepared and not findings["rolled_forward"]:
        vacuous.append(f"the reference replaced {prepared} file(s) under their names, yet no "
                       f"restart rolled a save forward: no kill landed between a rename and its "
                       f"commit")
        print(f"FAIL {vacuous[-1]}")
    if failures or vacuous or args.keep:
        print(f"  roots kept under {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failures or vacuous else 0


if __name__ == "__main__":
    sys.exit(main())
