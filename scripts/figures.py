#!/usr/bin/python3
"""Regenerates the figures table of docs/figures.md from the benches' --json files.

    /usr/bin/python3 scripts/figures.py --doc docs/figures.md --started ISO --load-before L
        --load-after L --command CMD [--failed NAME ...] FILE.json ...

Run by `scripts/run bench`, which gives every bench `--json build/figures/<bench>.json`
(bench/figures.h). Only the lines between `<!-- figures:begin -->` and `<!-- figures:end -->` are
replaced; the rest of the document (its hand-written history) is kept byte for byte. A missing
document is created holding just the markers and the table; a document without both markers is an
error and is left untouched.

Above the table: one line naming the date, `nproc`, the load average before and after the run and
the command. Columns: figure | goal | latest ratio | met. Every ratio is to a baseline measured in
the same run (this machine is noisy: compare ratios, not absolute numbers).
"""
import argparse
import datetime
import json
import math
import os
import sys

BEGIN = "<!-- figures:begin -->"
END = "<!-- figures:end -->"


def fmt_ratio(r):
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "n/a"
    a = abs(r)
    if a >= 100:
        return f"{r:.0f}"
    if a >= 10:
        return f"{r:.1f}"
    if a >= 0.1:
        return f"{r:.2f}"
    return f"{r:.3f}"


def cell(text):
    """A markdown table cell: no pipes, no newlines."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(figures_files, failed):
    rows = ["| figure | goal | latest ratio | met |", "|---|---|---|---|"]
    met_count = goals = 0
    for path in figures_files:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        for fig in doc.get("figures", []):
            ratio = fmt_ratio(fig.get("ratio"))
            if fig.get("value"):
                ratio += f" ({fig['value']})"
            met = fig.get("met")
            goal = fig.get("goal") or "(no goal)"
            if met is True:
                verdict = "met"
            elif met is False:
                verdict = "**not met**"
            else:
                verdict = "" if not fig.get("goal") else "n/a"
            if met is not None:
                goals += 1
                met_count += met is True
            rows.append(f"| {cell(fig['figure'])} | {cell(goal)} | {cell(ratio)} | {verdict} |")
    for name in failed:
        rows.append(f"| {cell(name)}: **failed, no figures** (see its output) | | | |")
    return rows, met_count, goals


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--doc", required=True)
    ap.add_argument("--started", required=True, help="start of the run, ISO 8601")
    ap.add_argument("--load-before", required=True)
    ap.add_argument("--load-after", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--failed", action="append", default=[])
    ap.add_argument("files", nargs="*")
    args = ap.parse_args()

    started = datetime.datetime.fromisoformat(args.started)
    finished = datetime.datetime.now(datetime.timezone.utc)
    minutes = (finished - started).total_seconds() / 60
    rows, met_count, goals = table(args.files, args.failed)
    header = (
        f"Measured {started.strftime('%Y-%m-%d %H:%M')}–{finished.strftime('%H:%M')} UTC "
        f"({minutes:.0f} min), `nproc` = {os.cpu_count()}, load average (1/5/15 min) "
        f"{args.load_before} before, {args.load_after} after, by `{args.command}`; "
        f"{met_count} of {goals} goals met. Ratios are to baselines measured in the same run."
    )
    block = [BEGIN, header, "", *rows, END]

    try:
        with open(args.doc, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = f"{BEGIN}\n{END}\n"
    b, e = text.find(BEGIN), text.find(END)
    if b < 0 or e < 0 or e < b:
        sys.exit(f"figures.py: {args.doc} lacks the markers {BEGIN} ... {END}; not modified")
    out = text[:b] + "\n".join(block) + text[e + len(END):]
    tmp = args.doc + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(out)
    os.replace(tmp, args.doc)
    print(f"figures.py: {len(rows) - 2} figures ({met_count} of {goals} goals met) -> {args.doc}")


if __name__ == "__main__":
    main()
