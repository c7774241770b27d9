"""Issue 14's evidence, with the framework's own sweeps and report: where 91 % stands against Page's 94 %.

    python benchmarks/evidence.py --data-root DATA --out results/<date>-gpu-evidence [--parts ...] [-- overrides]
    python benchmarks/evidence.py --table results/<date>-gpu-evidence      # the README's table, from the files

Parts (each one `resnet9.train --multirun`, its summary.json kept under OUT/<part>/ with the command and card):
  schedule  the defaults beside Page's schedule (experiment=mission,page: peak 0.4, LRMIN near zero), --seeds
  q50       the defaults on the staged copy passed once more through JPEG at quality 50 (benchmarks/reencode.py,
            about 28.7 dB against the staged copy, the damage of its first pass), --seeds
  options   eval_tta x label_smoothing (0, 0.2) x ema.decay (0, 0.99) over --option-seeds: every combination,
            so the best one is measured too. EMA 0.99 averages about the last 100 steps (one epoch at batch 512)
            of the low-LR end (from ema.start_epoch=20); 0.999 would still weight the epoch-20 weights by 0.6.
Jobs run with logger=none, progress=false and checkpoint=false. OUT keeps only what is worth committing (a few
KB per part); the sweeps' folders and the re-encoded copy go to --work (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = {
    "schedule": ["experiment=mission,page"],
    "q50": [],
    "options": ["eval_tta=false,true", "label_smoothing=0.0,0.2", "ema.decay=0.0,0.99"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "cifar10"))
    parser.add_argument("--out", type=Path, help="where each part's summary goes")
    parser.add_argument("--work", type=Path, help="the sweeps' folders and the re-encoded copy (default: temporary)")
    parser.add_argument("--parts", nargs="*", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds for schedule and q50")
    parser.add_argument("--option-seeds", type=int, default=5)
    parser.add_argument("--options", nargs="*", help="the options part's sweep (default: the whole cross)")
    parser.add_argument("--table", type=Path, nargs="*", help="print the table of these output folders and stop")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job (after --), e.g. model.width=1")
    return parser.parse_args()


def card() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()} (torch {torch.__version__})"


def run_part(part: str, args: argparse.Namespace, data_root: str) -> None:
    """One sweep; its summary.json and summary.md, and what made them (meta.json), under OUT/<part>/."""
    folder, sweep_dir = args.out / part, args.work / part
    seeds = args.option_seeds if part == "options" else args.seeds
    sweep = args.options if part == "options" and args.options else PARTS[part]
    command = [
        sys.executable, "-m", "resnet9.train", "--multirun", f"seed={','.join(map(str, range(seeds)))}", *sweep,
        f"data.root={data_root}", "logger=none", "progress=false", "checkpoint=false",
        f"hydra.sweep.dir={sweep_dir}", *args.overrides,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "summary.md"):
        if (sweep_dir / name).is_file():
            shutil.copyfile(sweep_dir / name, folder / name)
    meta = {"part": part, "command": " ".join(command[1:]), "data": data_root, "card": card(),
            "date": time.strftime("%Y-%m-%d"), "wall_s": round(time.perf_counter() - started, 1),
            "exit_status": result.returncode}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{part}: exit status {result.returncode}, {meta['wall_s']} s", flush=True)


def table(folders: list[Path]) -> str:
    """Per part and setting: n, final test accuracy (mean ± std, 95 % interval) and training time, from the files."""
    lines = [
        "| part | setting | n | final test acc (%) | 95% interval | train time (s) | card |",
        "|---|---|---|---|---|---|---|",
    ]
    for folder in folders:
        for meta_path in sorted(folder.glob("*/meta.json")):
            meta = json.loads(meta_path.read_text())
            summary = meta_path.parent / "summary.json"
            rows = json.loads(summary.read_text()) if summary.is_file() else []
            for row in rows:
                lines.append(_line(meta, row))
    return "\n".join(lines)


def _line(meta: dict, row: dict) -> str:
    def percent(key: str) -> str:
        return f"{100 * row[key]:.2f}" if row.get(key) is not None else "—"

    accuracy = percent("final_test_acc")
    if row.get("final_test_acc_std") is not None:
        accuracy += f" ± {100 * row['final_test_acc_std']:.2f}"
    interval = row.get("final_test_acc_ci95")
    bounds = f"{100 * interval[0]:.2f} – {100 * interval[1]:.2f}" if interval else "—"
    seconds = f"{row['train_time_s']:.1f}" if row.get("train_time_s") is not None else "—"
    return f"| {meta['part']} | {row['setting']} | {row['n']} | {accuracy} | {bounds} | {seconds} | {meta['card']} |"


def main() -> None:
    args = parse_args()
    if args.table is not None:
        print(table(args.table))
        return
    if args.out is None:
        sys.exit("evidence.py: give --out (where the summaries go), or --table FOLDERS")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="evidence-"))
    for part in args.parts:
        root = args.data_root
        if part == "q50":
            root = str(args.work / "data-q50")
            subprocess.run([sys.executable, str(REPO / "benchmarks" / "reencode.py"), args.data_root, root, "--quality",
                            "50"], check=True)  # fmt: skip
        run_part(part, args, root)
    print(table([args.out]))


if __name__ == "__main__":
    main()
