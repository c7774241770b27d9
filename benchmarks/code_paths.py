"""How far a reader follows the code: the package's modules per folder, and the files and functions that one
epoch and the LR derivation pass through, traced on a tiny CPU run.

    python benchmarks/code_paths.py                    # this checkout
    python benchmarks/code_paths.py --epoch resnet9.train:_fit --lrs resnet9.train:_derive_lrs

A path is every function of the package called, directly or not, while its entry function runs: for the epoch,
the trainer's epoch loop with `epochs=1` on the CPU (one epoch: train, evaluate, record, notify); for the LRs, the
derivation of LRMIN and LRMAX from `optimizer.lr=auto` (the range test, its curve, the rule, the scaling).
"stops" are the distinct functions the entry calls itself; "files" the package's files entered on the way;
"crossings" the distinct calls from one of the trainer's files into another (a reader's jumps between files).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "resnet9"


def modules_per_folder() -> dict[str, int]:
    counts = Counter(str(path.parent.relative_to(REPO)) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py")
    return dict(sorted(counts.items()))


class PathTracer:
    """Calls of package functions made while an entry function runs (by `module:qualname`)."""

    def __init__(self, entries: dict[str, str]) -> None:
        self.entries = entries  # label -> "module:qualname"
        self.called: dict[str, set[tuple[str, str]]] = {label: set() for label in entries}
        self.stops: dict[str, set[str]] = {label: set() for label in entries}
        self.crossings: dict[str, set[tuple[str, str]]] = {label: set() for label in entries}

    def __call__(self, frame, event, arg) -> None:
        if event != "call" or not frame.f_code.co_filename.startswith(str(PACKAGE)):
            return
        chain, parent = [], frame.f_back
        while parent is not None:
            if parent.f_code.co_filename.startswith(str(PACKAGE)):
                chain.append(parent)
            parent = parent.f_back
        for label, entry in self.entries.items():
            for depth, ancestor in enumerate(chain):
                if _name(ancestor) == entry:
                    self.called[label].add((_file(frame), _name(frame)))
                    if _file(chain[0]) != _file(frame) and all(map(_trainers, (chain[0], frame))):
                        self.crossings[label].add((_name(chain[0]), _name(frame)))
                    if depth == 0:
                        self.stops[label].add(_name(frame))
                    break


def _trainers(frame) -> bool:
    return _file(frame).startswith(("resnet9/train.py", "resnet9/training"))


def _file(frame) -> str:
    return str(Path(frame.f_code.co_filename).relative_to(REPO))


def _name(frame) -> str:
    module = _file(frame).removesuffix(".py").replace("/", ".")
    return f"{module}:{frame.f_code.co_qualname}"


def trace(entries: dict[str, str], data_root: str) -> PathTracer:
    from resnet9 import train

    tracer = PathTracer(entries)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", RESNET9_CACHE=str(Path(scratch) / "cache"))
        sys.argv = [
            "train", f"data.root={data_root}", "data.limit_train=512", "data.limit_test=200", "data.num_workers=0",
            "batch_size=64", "model.width=0.125", "epochs=1", "scheduler.peak_epoch=0.5", "lr_finder.num_iter=30",
            "progress=false", "device=cpu", f"hydra.run.dir={scratch}/run",
        ]  # fmt: skip
        sys.setprofile(tracer)
        try:
            train.main()
        finally:
            sys.setprofile(None)
    return tracer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epoch", default="resnet9.train:_fit", help="the epoch loop's function, module:qualname")
    parser.add_argument("--lrs", default="resnet9.train:_derive_lrs", help="the LR derivation's function")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "cifar10"))
    args = parser.parse_args()
    print("| folder | modules |\n|---|---|")
    for folder, count in modules_per_folder().items():
        print(f"| {folder} | {count} |")
    tracer = trace({"one epoch": args.epoch, "LR derivation": args.lrs}, args.data_root)
    print("\n| path | entry | stops | files | functions | of which the trainer's (train.py, training/) | crossings |")
    print("|---|---|---|---|---|---|---|")
    for label, entry in tracer.entries.items():
        files = {file for file, _ in tracer.called[label]}
        trainer = [
            file for file, _ in tracer.called[label] if file.startswith(("resnet9/train.py", "resnet9/training"))
        ]
        print(f"| {label} | `{entry}` | {len(tracer.stops[label])} | {len(files)} | {len(tracer.called[label])} | "
              f"{len(trainer)} in {len(set(trainer))} files | {len(tracer.crossings[label])} |")  # fmt: skip
    for label in tracer.entries:
        print(f"\n{label}:")
        for _, name in sorted(tracer.called[label]):
            print(f"  {name}")


if __name__ == "__main__":
    main()
