"""What an augmentation pipeline costs: images per second of the two engines and of a heavier custom pipeline,
side by side in one run, augmentation alone (no model).

    python benchmarks/pipeline_cost.py                       # 4,000 CIFAR-10 images, 3 interleaved rounds
    python benchmarks/pipeline_cost.py --images 2000 --workers 2

(1) device engine:           conf/augment/cutout.yaml on augment.DeviceLoader, batch by batch (the default engine)
(2) albumentations, mission: conf/augment/albumentations.yaml, the same pipeline per image (the reference engine)
(3) albumentations, heavier: (2) + ColorJitter + Affine (HEAVIER below), a custom pipeline as a user writes one

Each path hands out one epoch of training batches of the given images, exactly as training iterates them; the
paths run in interleaved rounds so that a noisy machine slows all alike, and each row is the median round. The
albumentations paths run in this process (--workers 0) unless told otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tabulate import tabulate

from resnet9.data import datasets

REPO = Path(__file__).resolve().parents[1]
# The heavier pipeline: the mission's, then colour and geometry changes on every image (p=1: the cost of each).
HEAVIER = [
    {"_target_": "albumentations.ColorJitter", "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05,
     "p": 1.0},
    {"_target_": "albumentations.Affine", "rotate": [-15, 15], "scale": [0.9, 1.1], "border_mode": 4, "p": 1.0},
]  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000, help="training images per epoch measured")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the albumentations paths")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "cifar10"),
                        help="CIFAR-10 root; random images when it holds none")  # fmt: skip
    return parser.parse_args()


def training_images(root: str, count: int) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        data_set = datasets.cifar10(root, download=False, limit_train=count)
        return data_set.train_images, data_set.train_labels, f"CIFAR-10 from {root}"
    except datasets.DataError:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
        return images, rng.integers(0, 10, size=count), "random 32x32 images (no CIFAR-10 found)"


def options() -> dict[str, object]:
    """The three paths' augment options, built from YAML as the trainer builds them."""
    conf = REPO / "conf" / "augment"
    mission = OmegaConf.load(conf / "albumentations.yaml")
    heavier = OmegaConf.merge(mission, {"train": [*mission.train, *HEAVIER]})
    return {
        "(1) device engine (cutout.yaml)": instantiate(OmegaConf.load(conf / "cutout.yaml"), engine="device"),
        "(2) albumentations, mission's pipeline (albumentations.yaml)": instantiate(mission),
        "(3) albumentations, + ColorJitter + Affine": instantiate(heavier),
    }


def measure(args: argparse.Namespace) -> tuple[list[list[str]], str]:
    """One row per path: its workers, images/s, microseconds per image, and its time per image against the
    device engine's."""
    images, labels, source = training_images(args.data_root, args.images)
    cpu = torch.device("cpu")
    built = {  # each option's training loader, as the trainer asks for it (the device engine has no workers)
        name: option.train_loader(images, labels, args.batch_size, cpu, seed=0,
                                  **({} if name.startswith("(1)") else {"num_workers": args.workers}))
        for name, option in options().items()
    }  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name in built}
    for _ in range(args.rounds):
        for name, loader in built.items():
            started, seen = time.perf_counter(), 0
            for batch, _labels in loader:
                seen += len(batch)
            rates[name].append(seen / (time.perf_counter() - started))
    device_rate = statistics.median(rates[next(iter(rates))])
    rows = []
    for name, measured in rates.items():
        rate = statistics.median(measured)
        workers = "-" if name.startswith("(1)") else str(args.workers)
        rows.append([name, workers, f"{rate:,.0f}", f"{1e6 / rate:.0f}", f"{device_rate / rate:.1f}"])
    return rows, source


def main() -> None:
    args = parse_args()
    rows, source = measure(args)
    print(f"augmentation alone, {args.images:,} training images ({source}), batch {args.batch_size}, "
          f"median of {args.rounds} rounds; torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"{date.today().isoformat()}")  # fmt: skip
    headers = ["pipeline", "workers", "images/s", "µs per image", "time × device engine's"]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
