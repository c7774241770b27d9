"""Where a training epoch's time goes: the trainer's step in six variants, whole epochs, interleaved, one process.

    python benchmarks/step_attribution.py                          # CPU: width 0.125, a few small steps
    python benchmarks/step_attribution.py --width 1 --steps 97     # GPU: whole epochs of the mission's network

Variants, each adding one change to the one before (3 is today's default on CUDA):
  1. loop:              the trainer's loop with its progress bar, each batch augmented on its own
  2. no reads:          without the bar (progress=false): nothing read from the device inside the epoch
  3. whole epoch:       the epoch augmented at once, batches as slices (augment.whole_epoch=true)
  4. compiled:          3 with torch.compile (compile=true)
  5. captured:          3 with the whole step replayed as one CUDA graph (cuda_graph=true; CUDA only)
  6. compiled+captured: 4 and 5 together (CUDA only)
and the bare step (random tensors already on the device, eager) that the ratios divide by.

Every variant starts from the same weights and trains its first epoch on the same batches: its loss after
that epoch must agree with the others' (compilation and graphs change rounding only). Then, untimed, one epoch
with every read from the device counted (`.item()`, `.tolist()`, `.cpu()`, `bool()`, `float()`) and one under
torch's profiler, whose time per step is split into kernel classes (on a GPU the kernels' own time, and the
share of the epoch the GPU was busy; on a CPU the operators' time). Then `--rounds` rounds of one timed epoch
per variant; each row reports the median round. The augmentation's own time is the loader alone, timed apart.
"prepare s": the capture, plus what the first epoch took beyond a usual one (compilation, cuDNN's autotuning;
a later variant may find caches an earlier one warmed). "GPU busy" is measured under the profiler, which
slows the host's side of an eager step (≈ 180 operators) more than one replay: read it as a lower bound there.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import random_batches, run_config, step_arguments, training_images  # noqa: E402  (the same config and data as throughput.py)

from resnet9.training.engine import build, cuda_graph  # noqa: E402
from resnet9.training.engine.loop import EpochSums, StepSettings, train_one_epoch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (overrides, progress bar, compile, CUDA graph)
    "1 loop": (["augment.whole_epoch=false"], True, False, False),
    "2 no reads": (["augment.whole_epoch=false"], False, False, False),
    "3 whole epoch": (["augment.whole_epoch=true"], False, False, False),
    "4 compiled": (["augment.whole_epoch=true"], False, True, False),
    "5 captured": (["augment.whole_epoch=true"], False, False, True),
    "6 compiled+captured": (["augment.whole_epoch=true"], False, True, True),
}
# Kernel (GPU) or operator (CPU) names, lower case, to classes; the first match wins.
CLASSES = [
    ("conv backward", r"convolution_backward|dgrad|wgrad|bprop"),
    ("conv forward", r"convolution|conv2d|fprop|implicit_gemm|xmma|cutlass|gemm|addmm|linear"),
    ("batchnorm", r"batch_norm|batchnorm|bn_"),
    ("pooling", r"pool"),
    ("optimizer", r"sgd|foreach|multi_tensor"),
    ("loss", r"softmax|nll_loss|cross_entropy"),
]
OTHER = "elementwise, copies, other"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(parser, width=0.125, steps_help="steps per epoch (97 = all 50,000 images at 512)")
    parser.add_argument("--log-every", type=int, default=10, help="the bar's reads: every N steps (the trainer's)")
    parser.add_argument("--only", nargs="*", help="variant numbers to run, e.g. --only 2 3 (default: all)")
    args = parser.parse_args()
    args.workers = 0
    return args


@dataclass
class Variant:
    """One way of running the trainer's epoch, with what it measured."""

    name: str
    cfg: DictConfig
    model: torch.nn.Module
    trained: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: object
    progress_bar: bool
    graph_step: cuda_graph.CapturedStep | None = None
    prepare_s: float = 0.0
    first_epoch_loss: float = float("nan")
    reads: int = 0
    seconds: list[float] = field(default_factory=list)
    classes: dict[str, float] = field(default_factory=dict)
    busy: float | None = None
    augment_s: float = float("nan")

    def run(self, settings: StepSettings) -> EpochSums:
        """One epoch's steps, at a fixed LR; nothing read back yet."""
        batches = tqdm(self.loader, leave=False) if self.progress_bar else self.loader
        scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        # first_step=1: step 0 is the run's very first, which the loop times by waiting for the device
        return train_one_epoch(
            self.trained, batches, self.optimizer, scheduler, settings, first_step=1, graph_step=self.graph_step
        )

    def epoch(self, settings: StepSettings) -> float:
        """One epoch and its mean loss (the epoch's one read, which waits for the device)."""
        return self.run(settings).read(first_step=1).loss


def build_variant(name: str, args: argparse.Namespace, data_set, initial: dict) -> Variant | None:
    overrides, bar, compile_it, graph = VARIANTS[name]
    cfg = run_config(args, "device", *overrides, f"log_every={args.log_every}")
    device = build.device(cfg.device)
    settings = build.step_settings(cfg, device)
    model = build.model(cfg.model, settings)
    model.load_state_dict(initial)
    optimizer = build.optimizer(cfg.optimizer, model, lr=0.02, **build.fused_kernels(cfg.optimizer, device))
    trained = build.compiled(model) if compile_it else model
    variant = Variant(name, cfg, model, trained, optimizer, build.train_loader(cfg, data_set, settings, 0), bar)
    if graph:
        started = time.perf_counter()
        scaler = build.loss_scaler(settings.autocast_dtype, device)
        variant.graph_step = cuda_graph.capture_step(trained, optimizer, settings, args.batch_size, scaler)
        if variant.graph_step is None:
            return None
        variant.prepare_s = time.perf_counter() - started
    return variant


@contextlib.contextmanager
def counted_reads() -> Iterator[list[str]]:
    """Every read from a tensor to the host inside the block, by method name (on a GPU each one waits for it)."""
    reads: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "cpu", "__bool__", "__float__")}

    def counting(name: str, real: Callable) -> Callable:
        def read(self, *args, **kwargs):
            reads.append(name)
            return real(self, *args, **kwargs)

        return read

    try:
        for name, real in originals.items():
            setattr(torch.Tensor, name, counting(name, real))
        yield reads
    finally:
        for name, real in originals.items():
            setattr(torch.Tensor, name, real)


def kernel_class(name: str) -> str:
    lowered = name.lower()
    return next((label for label, pattern in CLASSES if re.search(pattern, lowered)), OTHER)


def profiled_epoch(variant: Variant, settings: StepSettings, steps: int) -> None:
    """One epoch under torch's profiler: milliseconds per step by class, and (GPU) the share the GPU was busy."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = settings.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    with profile(activities=activities) as profiler:
        started = time.perf_counter()
        variant.epoch(settings)
        wall = time.perf_counter() - started
    totals = dict.fromkeys([label for label, _ in CLASSES] + [OTHER], 0.0)
    for row in profiler.key_averages():
        if on_gpu:  # the kernels themselves (rows of device type CUDA), not the operators that launched them,
            # nor the GPU-side spans of annotations (e.g. Optimizer.step), which overlap the kernels inside them
            if "cuda" not in str(getattr(row, "device_type", "")).lower() or getattr(row, "is_user_annotation", False):
                continue
            microseconds = getattr(row, "self_device_time_total", 0.0)
        else:
            microseconds = row.self_cpu_time_total
        totals[kernel_class(row.key)] += microseconds / 1000 / steps
    variant.classes = totals
    variant.busy = sum(totals.values()) * steps / 1000 / wall if on_gpu else None


def synchronize(settings: StepSettings) -> None:
    if settings.device.type == "cuda":
        torch.cuda.synchronize(settings.device)


def loader_alone(variant: Variant, settings: StepSettings) -> float:
    """Seconds the loader takes for an epoch on its own (the augmentation and the batches' slicing)."""
    synchronize(settings)
    started = time.perf_counter()
    for _ in variant.loader:
        pass
    synchronize(settings)
    return time.perf_counter() - started


def bare_step_seconds(args: argparse.Namespace, initial: dict, rounds: int) -> float:
    """Median seconds for `args.steps` eager steps on random tensors already on the device: the compute alone."""
    variant_cfg = run_config(args, "device")
    device = build.device(variant_cfg.device)
    settings = build.step_settings(variant_cfg, device)
    model = build.model(variant_cfg.model, settings)
    model.load_state_dict(initial)
    optimizer = build.optimizer(
        variant_cfg.optimizer, model, lr=0.02, **build.fused_kernels(variant_cfg.optimizer, device)
    )
    batches = random_batches(args, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    train_one_epoch(model, batches[:1], optimizer, scheduler, settings, first_step=1).read(first_step=1)  # warm-up
    seconds = []
    for _ in range(rounds):
        synchronize(settings)
        started = time.perf_counter()
        train_one_epoch(model, batches, optimizer, scheduler, settings, first_step=1).read(first_step=1)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(variants: list[Variant], settings: StepSettings, args: argparse.Namespace) -> None:
    """First epochs (the loss that must agree; compilation), counted reads, the profile, then timed rounds."""
    for variant in variants:
        started = time.perf_counter()
        variant.first_epoch_loss = variant.epoch(settings)
        variant.prepare_s += time.perf_counter() - started  # compilation is in the first epoch
        with counted_reads() as reads:  # inside the epoch: the bar's running numbers, anything else that waits
            progress = variant.run(settings)
        variant.reads = len(reads)
        progress.read(first_step=1)
        profiled_epoch(variant, settings, args.steps)
        variant.augment_s = loader_alone(variant, settings)
    for round_index in range(args.rounds):
        for variant in variants:
            synchronize(settings)
            started = time.perf_counter()
            variant.epoch(settings)
            variant.seconds.append(time.perf_counter() - started)
        line = ", ".join(f"{v.name}: {v.seconds[-1]:.3f} s" for v in variants)
        print(f"  round {round_index + 1}: {line}", flush=True)
    for variant in variants:  # capture, and what the first epoch took beyond a usual one (compilation, autotuning)
        variant.prepare_s -= statistics.median(variant.seconds)


def table(variants: list[Variant], bare_s: float, args: argparse.Namespace) -> str:
    from tabulate import tabulate

    images = args.steps * args.batch_size
    headers = ["variant", "s/epoch", "images/s", "÷ bare", "GPU busy", "reads/epoch", "prepare s",
               "loss after epoch 1", "augment ms/step",
               *[f"{label} ms/step" for label, _ in CLASSES], f"{OTHER} ms/step"]  # fmt: skip
    rows = [["bare step (random tensors)", f"{bare_s:.3f}", f"{images / bare_s:,.0f}", "1.000", "", "", "", "", ""]]
    for v in variants:
        median = statistics.median(v.seconds)
        rows.append([
            v.name, f"{median:.3f}", f"{images / median:,.0f}", f"{bare_s / median:.3f}",
            "—" if v.busy is None else f"{100 * v.busy:.0f} %", v.reads, f"{max(v.prepare_s, 0.0):.1f}",
            f"{v.first_epoch_loss:.4f}", f"{1000 * v.augment_s / args.steps:.2f}",
            *[f"{ms:.2f}" for ms in v.classes.values()],
        ])  # fmt: skip
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def main() -> None:
    args = parse_args()
    build.seed_everything(0)  # as the trainer does, which also turns on cuDNN's autotuning
    names = [name for name in VARIANTS if not args.only or name.split()[0] in args.only]
    cfg = run_config(args, "device", f"log_every={args.log_every}")
    device = build.device(cfg.device)
    settings = build.step_settings(cfg, device)
    data_set, source = training_images(args.data_root, args.steps * args.batch_size)
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in build.model(cfg.model, settings).state_dict().items()}
    print(f"device {device} ({settings.autocast_dtype or 'fp32'}), width {args.width}, batch {args.batch_size}, "
          f"{args.steps} steps per epoch, {args.rounds} rounds; data: {source}; torch {torch.__version__}",
          flush=True)  # fmt: skip
    variants = []
    for name in names:
        variant = build_variant(name, args, data_set, initial)
        if variant is None:
            print(f"  {name}: not run here (see the warning above)", flush=True)
        else:
            variants.append(variant)
    measure(variants, settings, args)
    print()
    print(table(variants, bare_step_seconds(args, initial, args.rounds), args))
    losses = [v.first_epoch_loss for v in variants]
    print(
        f"\nloss after the first epoch, same weights and batches: {min(losses):.4f} to {max(losses):.4f} "
        f"(spread {max(losses) - min(losses):.2g})"
    )


if __name__ == "__main__":
    main()
