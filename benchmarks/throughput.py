"""Training throughput of the three data paths, side by side, on whatever device is here.

    python benchmarks/throughput.py                        # CPU: full width, batch 512, a few steps each
    python benchmarks/throughput.py --steps 97 --rounds 5  # GPU: whole epochs
    python benchmarks/throughput.py --full-run --seeds 5   # plus N complete training runs (24 epochs each)

(a) bare:            the model's training step on random tensors already on the device (the compute alone)
(b) device-resident: the trainer's epoch loop fed by augment.DeviceLoader (the default engine)
(c) albumentations:  the same loop fed by the albumentations DataLoader (the reference engine)
(d) whole epoch:     (b) with augment.whole_epoch=true: the epoch augmented at once, batches as slices

All three run through the trainer's `loop.train_one_epoch`, built by `resnet9.training.engine.build` from the
trainer's own config (channels_last, bf16 autocast on CUDA, fused SGD on CUDA). The measurements are interleaved in
rounds so that a noisy machine slows all three alike, and each row reports the median round. The ratio (b)/(a) is
the share of pure compute the data path keeps: 1.0 means augmentation is free.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from resnet9.data import datasets
from resnet9.training.config import schema
from resnet9.training.engine import build
from resnet9.training.engine.loop import StepSettings, train_one_epoch

REPO = Path(__file__).resolve().parents[1]


def step_arguments(parser: argparse.ArgumentParser, width: float, steps_help: str) -> None:
    """What the step benchmarks (this one and step_attribution.py) measure on: model, batch, device, data."""
    parser.add_argument("--width", type=float, default=width, help="model width (1.0 = the mission's network)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help=steps_help)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "cifar10"),
                        help="CIFAR-10 root; random images when it holds none")  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(parser, width=1.0, steps_help="training steps per measurement")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for path (c)")
    parser.add_argument("--full-run", action="store_true", help="also train --seeds complete runs")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", help="keep the full runs' output folders here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for --full-run, e.g. epochs=24")
    return parser.parse_args()


def training_images(root: str, count: int) -> tuple[datasets.ImageData, str]:
    try:
        data_set = datasets.load(root, download=False, limit_train=count)
        source = f"CIFAR-10 from {root}"
    except datasets.DataError:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count)
        data_set = datasets.ImageData(images, labels, images[:0], labels[:0])
        source = "random images (no CIFAR-10 found)"
    return data_set, source


def run_config(args: argparse.Namespace, engine: str, *extra: str) -> DictConfig:
    """The trainer's own config (conf/), at the benchmark's width, batch, precision and device."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"model.width={args.width}", f"batch_size={args.batch_size}", f"precision={args.precision}",
            f"device={args.device}", f"augment.engine={engine}", f"data.num_workers={args.workers}",
            "optimizer.lr=0.01", "scheduler.lr_min=0.001", *extra,
        ])  # fmt: skip
    schema.validate(cfg)
    return cfg


def random_batches(args: argparse.Namespace, settings: StepSettings) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`args.steps` batches of random images and labels already on the device: the bare step's input."""
    return [
        (torch.randn(args.batch_size, 3, 32, 32, device=settings.device).contiguous(
            memory_format=settings.memory_format),
         torch.randint(0, 10, (args.batch_size,), device=settings.device))
        for _ in range(args.steps)
    ]  # fmt: skip


def measure_paths(args: argparse.Namespace) -> list[tuple[str, float]]:
    cfg = run_config(args, engine="device")
    device = build.device(cfg.device)
    settings = build.step_settings(cfg, device)
    torch.manual_seed(0)
    model = build.model(cfg.model, settings)
    optimizer = build.optimizer(cfg.optimizer, model, lr=0.01, **build.fused_kernels(cfg.optimizer, device))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # the loop steps one; keep LR fixed

    count = args.steps * args.batch_size
    data_set, source = training_images(args.data_root, count)
    paths = {
        "(a) bare model, random tensors": random_batches(args, settings),
        "(b) device-resident loader": build.train_loader(cfg, data_set, settings, seed=0),
        f"(c) albumentations DataLoader, {args.workers} workers": build.train_loader(
            run_config(args, engine="albumentations"), data_set, settings, seed=0
        ),
        "(d) device-resident, whole epoch at once": build.train_loader(
            run_config(args, "device", "augment.whole_epoch=true"), data_set, settings, seed=0
        ),
    }

    def timed(batches) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        train_one_epoch(model, batches, optimizer, scheduler, settings).read(first_step=0)  # the read synchronizes
        return time.perf_counter() - started

    print(f"device {device} ({settings.autocast_dtype or 'fp32'}), width {args.width}, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds; data: {source}", flush=True)  # fmt: skip
    for batches in paths.values():  # warm-up, one batch each: allocator, cuDNN autotuning, worker code paths
        train_one_epoch(model, [next(iter(batches))], optimizer, scheduler, settings)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for round_index in range(args.rounds):
        for name, batches in paths.items():
            seconds[name].append(timed(batches))
        print(f"  round {round_index + 1}: " + ", ".join(f"{s[-1]:.2f}s" for s in seconds.values()), flush=True)
    return [(name, count / statistics.median(times)) for name, times in seconds.items()]


def full_runs(args: argparse.Namespace) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            out = Path(args.out or tmp) / f"seed{seed}"
            command = [sys.executable, "-m", "resnet9.train", f"seed={seed}", f"data.root={args.data_root}",
                       f"device={args.device}", "logger=none", "progress=false", f"hydra.run.dir={out}",
                       *args.overrides]  # fmt: skip
            subprocess.run(command, cwd=REPO, check=True)
            results.append(json.loads((out / "metrics.json").read_text()))
    return results


def main() -> None:
    args = parse_args()
    rows = measure_paths(args)
    bare, device_path, albu, whole_epoch = (rate for _, rate in rows)
    print("\n| path | images/s |\n|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.1f} |")
    print(f"| ratio (b)/(a): data path keeps this share of pure compute | {device_path / bare:.3f} |")
    print(f"| ratio (b)/(c): device-resident vs albumentations | {device_path / albu:.3f} |")
    print(f"| ratio (d)/(a): the whole-epoch data path keeps this share of pure compute | {whole_epoch / bare:.3f} |")

    if args.full_run:
        runs = full_runs(args)
        accuracy = [100 * m["final_test_acc"] for m in runs]
        train_time = [m["train_time_s"] for m in runs]
        first_step = [m.get("first_step_s", float("nan")) for m in runs]

        def mean_std(values: list[float]) -> str:
            return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0:.2f}"

        print(f"\n| {len(runs)} full runs | mean ± std |\n|---|---|")
        print(f"| final test accuracy (%) | {mean_std(accuracy)} |")
        print(f"| training time (s), all epochs, without evaluation | {mean_std(train_time)} |")
        print(f"| first step (s), holds torch.compile's compilation if on | {mean_std(first_step)} |")
        print(f"| per seed: accuracy | {', '.join(f'{a:.2f}' for a in accuracy)} |")


if __name__ == "__main__":
    main()
