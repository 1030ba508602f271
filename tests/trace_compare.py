#!/usr/bin/python3
"""Compare two `ckptledger simulate` traces by the rules of docs/behaviour.md (simulate traces).

    trace_compare.py EXPECTED.json ACTUAL.json [--crash-final-only] [--final-against NOCRASH.json]

EXPECTED is usually a case file from tests/data/examples (what MMEngine did), ACTUAL what
ckptledger did. A case file ({"scenario": ..., "trace": ...}) is accepted wherever a trace is. Exit
status: 0 when equal, 1 when they differ (each difference printed with its location), 2 on bad
usage or input.

Rules, as implemented:

* Runs: the number of runs, and per run `end`. For `end == "error"`, `error.phase`; the error
  `type`, `message` and `stage` are not compared.
* Earlier failure: ckptledger raises every configuration error when the hook is
  constructed. An actual phase that comes *earlier* than the expected one, in the order
  hook_init < runner_init < train, is accepted (e.g. MMEngine failed in `train` at its first save,
  ckptledger in `hook_init`). Such a run wrote nothing in ckptledger, so its events are not
  compared, and the final state is compared against the state at the start of that run: the
  expected `files` just before it (the last recorded event of an earlier run, or none), while
  final checkpoints and published files are not compared. A later phase than expected, or an error
  where the expected run completed, is a difference.
* Events, per run: aligned on (stage, epoch, iter) so that a missing or extra event is reported as
  such; then per event `stage`, `epoch`, `iter`, `files`, `info`, `last_checkpoint`, and per save
  `file`, `ckpt.keys`, `ckpt.meta`, `ckpt.hub` (save count too). Not compared: `logs`, `call`,
  `batch_idx`, `ckpt.n_param_schedulers`, `meta_keys`, `resume`, `load_from`, `resumed_from`,
  `crash`, `mmengine`, `sha8_matches_pickle_sha256`.
* Final: `final.files`, `final.checkpoints` (set of paths; per path `keys`, `meta`, `hub`) and
  `final.published[].keys` (count and keys per position).
* Values: a string starting with "$ROOT/" equals the same path without that prefix (and "$ROOT"
  equals "."), anywhere in a value, dict keys included. Numbers compare with a relative tolerance of
  1e-9 (an int equals the float of the same value; booleans are not numbers); the float markers
  {"__float__": "nan"|"inf"|"-inf"} decode first and NaN equals NaN. `files` and checkpoint `keys`
  compare as sets (they are sorted lists in a trace). A missing `info`/`hub` is {}, a missing
  `saves` is [], a missing `last_checkpoint` is null.
* Crash scenarios (a run killed and resumed must end as the run without the crash), options:
  --crash-final-only: when EXPECTED has a run that ended "crashed", compare runs (count, end,
      phase) and the final state only, not events (ckptledger's resume is allowed to differ from
      MMEngine's on the way).
  --final-against NOCRASH: compare the final state with NOCRASH's final state (the same scenario
      run without the crash) instead of EXPECTED's; events are not compared; runs still are,
      against EXPECTED.
"""

import argparse
import difflib
import json
import math
import sys

PHASE_ORDER = {"hook_init": 0, "runner_init": 1, "train": 2}
MAX_LINES = 30
REL_TOL = 1e-9
_MISSING = object()


# ---- normalisation and value comparison -------------------------------------------------------

def _norm_str(s):
    if s == "$ROOT":
        return "."
    if s.startswith("$ROOT/"):
        return s[len("$ROOT/"):]
    return s


def _decode_float_marker(v):
    if isinstance(v, dict) and len(v) == 1 and "__float__" in v:
        return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.get(v["__float__"], v)
    return v


def normalise(v):
    """Strip "$ROOT/" from every string (dict keys too) and decode float markers, recursively."""
    v = _decode_float_marker(v)
    if isinstance(v, str):
        return _norm_str(v)
    if isinstance(v, list):
        return [normalise(x) for x in v]
    if isinstance(v, dict):
        return {(_norm_str(k) if isinstance(k, str) else k): normalise(x) for k, x in v.items()}
    return v


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def values_equal(a, b):
    """Equality after normalisation: numbers with tolerance, NaN == NaN, containers recursively."""
    if _is_number(a) and _is_number(b):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        if a == b:
            return True
        if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
            return False
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=0.0)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _show(v):
    if v is _MISSING:
        return "<absent>"
    s = json.dumps(v, sort_keys=False)
    return s if len(s) <= 120 else s[:117] + "..."


# ---- field comparators (append to `out`) ------------------------------------------------------

def _cmp_value(out, where, field, exp, act):
    if not values_equal(exp, act):
        out.append(f"{where}: {field}: expected {_show(exp)}, got {_show(act)}")


def _cmp_set(out, where, field, exp, act):
    exp = exp if isinstance(exp, list) else []
    act = act if isinstance(act, list) else []
    es = {json.dumps(x) for x in exp}
    as_ = {json.dumps(x) for x in act}
    missing = sorted(es - as_)
    extra = sorted(as_ - es)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing [" + ", ".join(missing) + "]")
        if extra:
            parts.append("extra [" + ", ".join(extra) + "]")
        out.append(f"{where}: {field}: " + "; ".join(parts))


def _cmp_dict(out, where, field, exp, act):
    exp = exp if isinstance(exp, dict) else {}
    act = act if isinstance(act, dict) else {}
    for k in list(exp) + [k for k in act if k not in exp]:
        e = exp.get(k, _MISSING)
        a = act.get(k, _MISSING)
        if e is _MISSING or a is _MISSING or not values_equal(e, a):
            out.append(f"{where}: {field}.{k}: expected {_show(e)}, got {_show(a)}")


def _cmp_ckpt(out, where, exp, act):
    _cmp_set(out, where, "keys", exp.get("keys"), act.get("keys"))
    _cmp_value(out, where, "meta", exp.get("meta"), act.get("meta"))
    _cmp_dict(out, where, "hub", exp.get("hub"), act.get("hub"))


# ---- events -----------------------------------------------------------------------------------

def _event_key(e):
    return (e.get("stage"), e.get("epoch"), e.get("iter"))


def _event_label(e):
    return f"{e.get('stage')} epoch={e.get('epoch')} iter={e.get('iter')}"


def _cmp_event(out, where, exp, act):
    for field in ("stage", "epoch", "iter"):
        _cmp_value(out, where, field, exp.get(field), act.get(field))
    _cmp_set(out, where, "files", exp.get("files"), act.get("files"))
    _cmp_dict(out, where, "info", exp.get("info"), act.get("info"))
    _cmp_value(out, where, "last_checkpoint", exp.get("last_checkpoint"),
               act.get("last_checkpoint"))
    es, as_ = exp.get("saves") or [], act.get("saves") or []
    if len(es) != len(as_):
        out.append(f"{where}: saves: expected {len(es)} "
                   f"{[s.get('file') for s in es]}, got {len(as_)} {[s.get('file') for s in as_]}")
    for k, (se, sa) in enumerate(zip(es, as_)):
        sw = f"{where} save {k}"
        _cmp_value(out, sw, "file", se.get("file"), sa.get("file"))
        _cmp_ckpt(out, sw, se.get("ckpt") or {}, sa.get("ckpt") or {})


def _cmp_events(out, run_idx, exp_events, act_events):
    ek = [_event_key(e) for e in exp_events]
    ak = [_event_key(e) for e in act_events]
    sm = difflib.SequenceMatcher(a=ek, b=ak, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            for i, j in zip(range(i1, i2), range(j1, j2)):
                where = f"run {run_idx} event {i} ({exp_events[i].get('stage')})"
                if i != j:
                    where += f" [actual event {j}]"
                _cmp_event(out, where, exp_events[i], act_events[j])
            continue
        for i in range(i1, i2):
            out.append(f"run {run_idx} event {i}: missing event {_event_label(exp_events[i])}")
        for j in range(j1, j2):
            out.append(f"run {run_idx} actual event {j}: extra event {_event_label(act_events[j])}")


# ---- runs and final ---------------------------------------------------------------------------

def _files_before_run(runs, idx):
    for r in reversed(runs[:idx]):
        if r.get("events"):
            return r["events"][-1].get("files") or []
    return []


def _cmp_final(out, exp_final, act_final, label="final"):
    exp_final = exp_final or {}
    act_final = act_final or {}
    _cmp_set(out, label, "files", exp_final.get("files"), act_final.get("files"))
    ec = exp_final.get("checkpoints") or {}
    ac = act_final.get("checkpoints") or {}
    _cmp_set(out, label, "checkpoints", sorted(ec), sorted(ac))
    for path in sorted(set(ec) & set(ac)):
        _cmp_ckpt(out, f"{label} checkpoint {path}", ec[path] or {}, ac[path] or {})
    ep = exp_final.get("published") or []
    ap = act_final.get("published") or []
    if len(ep) != len(ap):
        out.append(f"{label}: published: expected {len(ep)} files, got {len(ap)}")
    for k, (pe, pa) in enumerate(zip(ep, ap)):
        _cmp_set(out, f"{label} published {k}", "keys", pe.get("keys"), pa.get("keys"))


def trace_of(doc):
    """The trace inside a case file, or the document itself."""
    if isinstance(doc, dict) and "trace" in doc and "runs" not in doc:
        return doc["trace"]
    return doc


def is_crash_trace(trace):
    return any(r.get("end") == "crashed" for r in trace.get("runs") or [])


def compare(expected, actual, *, crash_final_only=False, final_against=None):
    """Differences between two traces (or case files), as printable lines; [] when equal.

    `final_against`: a trace (or case file) of the scenario run without its crash; when given,
    the final state is compared with its final state and events are not compared.
    `crash_final_only`: for an expected trace with a crashed run, compare runs and final state only.
    """
    exp = normalise(trace_of(expected))
    act = normalise(trace_of(actual))
    out = []
    skip_events = final_against is not None or (crash_final_only and is_crash_trace(exp))

    exp_runs = exp.get("runs") or []
    act_runs = act.get("runs") or []
    if len(exp_runs) != len(act_runs):
        out.append(f"runs: expected {len(exp_runs)} runs, got {len(act_runs)}")
    early_failure_at = None  # run index of an accepted earlier failure
    for idx, (er, ar) in enumerate(zip(exp_runs, act_runs)):
        where = f"run {idx}"
        e_end, a_end = er.get("end"), ar.get("end")
        run_events = not skip_events
        if e_end != a_end:
            out.append(f"{where}: end: expected {_show(e_end)}, got {_show(a_end)}"
                       + (f" (phase {_show((ar.get('error') or {}).get('phase'))}:"
                          f" {_show((ar.get('error') or {}).get('message'))})"
                          if a_end == "error" else ""))
        elif e_end == "error":
            ep = (er.get("error") or {}).get("phase")
            ap = (ar.get("error") or {}).get("phase")
            if ep != ap:
                if ap in PHASE_ORDER and ep in PHASE_ORDER and PHASE_ORDER[ap] < PHASE_ORDER[ep]:
                    # ckptledger fails earlier (config errors at construction); it wrote
                    # nothing in this run.
                    run_events = False
                    if early_failure_at is None:
                        early_failure_at = idx
                else:
                    out.append(f"{where}: error.phase: expected {_show(ep)}, got {_show(ap)}")
        if run_events:
            _cmp_events(out, idx, er.get("events") or [], ar.get("events") or [])

    if early_failure_at is not None:
        before = _files_before_run(exp_runs, early_failure_at)
        _cmp_set(out, f"final (state before run {early_failure_at}, which failed earlier)",
                 "files", before, (act.get("final") or {}).get("files"))
    elif final_against is not None:
        ref = normalise(trace_of(final_against))
        _cmp_final(out, ref.get("final"), act.get("final"), label="final (vs no-crash run)")
    else:
        _cmp_final(out, exp.get("final"), act.get("final"))
    return out


def format_report(diffs, limit=MAX_LINES):
    lines = diffs[:limit]
    if len(diffs) > limit:
        lines.append(f"... and {len(diffs) - limit} more differences")
    return "\n".join(lines)


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Compare two ckptledger simulate traces.")
    ap.add_argument("expected")
    ap.add_argument("actual")
    ap.add_argument("--crash-final-only", action="store_true",
                    help="for a crash scenario, compare runs and the final state, not events")
    ap.add_argument("--final-against", metavar="NOCRASH.json",
                    help="compare the final state with this trace of the run without the crash")
    args = ap.parse_args(argv)
    try:
        expected = _load(args.expected)
        actual = _load(args.actual)
        nocrash = _load(args.final_against) if args.final_against else None
    except (OSError, ValueError) as e:
        print(f"trace_compare: {e}", file=sys.stderr)
        return 2
    diffs = compare(expected, actual, crash_final_only=args.crash_final_only,
                    final_against=nocrash)
    if not diffs:
        return 0
    print(f"{args.actual} differs from {args.expected}: {len(diffs)} differences")
    print(format_report(diffs))
    return 1


if __name__ == "__main__":
    sys.exit(main())
