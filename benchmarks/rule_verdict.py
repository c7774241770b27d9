"""Which range-test rule the mission's run keeps as its default: the decision rule applied to a sweep's summary.

    python benchmarks/rule_verdict.py multirun/.../rules      # a sweep over lr_finder.rule (and seeds)

The sweep (`--multirun seed=0,1,2 lr_finder.rule=steepest,lowest`, the mission's defaults otherwise) writes
summary.json, one row per rule. The default rule (`steepest`) stays the default unless its mean final test
accuracy is more than `--margin` (0.2) points below the previous rule's (`lowest`, 91.14 ± 0.06 % over 3 seeds
on an H100, 2026-11-26). Exit status: 0 when it stays, 3 when it loses, 2 when the summary cannot decide (a
rule with no completed run). Every other rule in the summary is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

KEEPS, LOSES, UNDECIDED = 0, 3, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="the sweep folder (its summary.json)")
    parser.add_argument("--default", default="steepest", help="the rule on trial")
    parser.add_argument("--against", default="lowest", help="the rule it must not lose to")
    parser.add_argument("--margin", type=float, default=0.2, help="points the default may be below (mean)")
    return parser.parse_args(argv)


def rule_rows(summary: list[dict]) -> dict[str, dict]:
    """The summary's rows by rule name, for rows that set lr_finder.rule and nothing else."""
    rows = {}
    for row in summary:
        key, _, value = row["setting"].partition("=")
        if key == "lr_finder.rule" and " " not in value:
            rows[value] = row
    return rows


def verdict(rows: dict[str, dict], default: str, against: str, margin: float) -> tuple[int, str]:
    for rule in (default, against):
        if not rows.get(rule, {}).get("n"):
            return UNDECIDED, f"undecided: no completed run with lr_finder.rule={rule}"
    gap = 100 * (rows[default]["final_test_acc"] - rows[against]["final_test_acc"])
    difference = f"{default} - {against} = {gap:+.2f} points on the mean"
    if gap < -margin:
        return LOSES, f"{difference}, more than {margin} below: {default} must not stay the default"
    return KEEPS, f"{difference}, not more than {margin} below: {default} stays the default"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary_file = args.sweep / "summary.json"
    try:
        rows = rule_rows(json.loads(summary_file.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        print(f"error: {summary_file} is not a sweep summary ({err}); pass the folder of a finished sweep")
        return UNDECIDED
    for rule, row in rows.items():
        acc, std = 100 * row.get("final_test_acc", math.nan), 100 * (row.get("final_test_acc_std") or 0.0)
        print(f"{rule}: {acc:.2f} ± {std:.2f} % over {row.get('n', 0)} runs, LRMAX {row.get('lr_max', math.nan):.4g}")
    status, line = verdict(rows, args.default, args.against, args.margin)
    print(f"verdict: {line}")
    return status


if __name__ == "__main__":
    sys.exit(main())
