"""LR range test (torch-lr-finder) -> LRMIN and LRMAX for One Cycle, with a plot and an on-disk cache.

The test trains the freshly initialised model for `num_iter` batches while the LR grows exponentially from
`start_lr` to `end_lr`, records the (exponentially smoothed) loss, stops early once the loss diverges, and
then restores the model and optimizer exactly (torch-lr-finder's `reset`).

The rule that reads the curve, after trimming `skip_start` points (noisy start) and `skip_end` points (the
divergent tail):
- LRMAX = (LR at the lowest smoothed loss) / max_divisor. Past that point the loss climbs: the LR is too
  large for the network to make progress. max_divisor defaults to 1; raise it for a more cautious peak.
- LRMIN = where the fall begins: the first LR at which the smoothed loss has made `min_drop` (default 0.1)
  of its way from the start of the curve down to the lowest point — the bottom of the range in which the
  network learns at all (Smith's lower bound). One Cycle starts and, with no annihilation, *ends* here, so
  this must be a low LR: the steepest point of the fall (recorded and drawn as `steepest_lr`), an earlier
  rule, ended the run at a quarter of LRMAX and cost 3.7 points (87.25% vs 90.92% on an H100, see README).
  If the curve never falls below LRMAX, LRMIN = LRMAX / 10 (recorded in `rule`).
No rule fits every curve (torch-lr-finder's maintainers say as much): the plot shows both points, and
`optimizer.lr` / `scheduler.lr_min` accept numbers that override either one, `lr_finder.scale` both.

Also a command: `python -m resnet9.lr_find [overrides]` runs (or reuses) the test for the composed config.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from resnet9 import build, distributed, files, plots, schema
from resnet9.errors import ConfigError, UsageError, exit_on_usage_error

log = logging.getLogger("resnet9.lr_find")

JSON_NAME, PLOT_NAME = "lr_finder.json", "lr_finder.png"


class LRFinderError(UsageError):
    """The range test produced a curve too short to read."""


@dataclass
class LRRange:
    lr_min: float
    lr_max: float
    steepest_lr: float
    min_loss_lr: float
    rule: str
    history: dict[str, list[float]] = field(default_factory=dict)
    cached: bool = False
    cache_key: str = ""


def derive_lr_range(
    lrs: list[float],
    losses: list[float],
    skip_start: int,
    skip_end: int,
    max_divisor: float,
    min_drop: float = 0.1,
) -> LRRange:
    """Apply the rule in this module's docstring to a recorded curve."""
    end = len(lrs) - skip_end
    trimmed_lrs, trimmed_losses = np.asarray(lrs[skip_start:end]), np.asarray(losses[skip_start:end])
    lowest = int(np.argmin(trimmed_losses))
    min_loss_lr = float(trimmed_lrs[lowest])
    lr_max = min_loss_lr / max_divisor
    falling = trimmed_losses[: lowest + 1]
    steepest_lr = float(trimmed_lrs[np.argmin(np.gradient(falling))]) if len(falling) >= 3 else float("nan")
    threshold = falling[0] - min_drop * (falling[0] - falling[-1])
    fall_begins_lr = float(trimmed_lrs[int(np.argmax(falling <= threshold))])
    rule = f"LRMAX = lowest-loss LR / {max_divisor:g}; "
    if fall_begins_lr < lr_max:
        lr_min, rule = fall_begins_lr, rule + f"LRMIN = first LR {min_drop:g} of the way down to the lowest loss"
    else:
        lr_min, rule = lr_max / 10, rule + "LRMIN = LRMAX / 10 (the loss does not fall below LRMAX)"
    history = {"lr": [float(x) for x in lrs], "loss": [float(x) for x in losses]}
    return LRRange(lr_min, lr_max, steepest_lr, min_loss_lr, rule, history)


def run_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader | Iterable,
    device: torch.device,
    finder_cfg: DictConfig,
    progress: bool = True,
) -> LRRange:
    """Run the test, restore model and optimizer, and derive LRMIN/LRMAX from the recorded curve."""
    # Imported here: torch-lr-finder brings matplotlib's pyplot (0.3 s), needed only when a test really runs.
    from torch_lr_finder import LRFinder, TrainDataLoaderIter

    finder = LRFinder(model, optimizer, nn.CrossEntropyLoss(), device=device)
    if not isinstance(loader, DataLoader):  # the device-resident loader: torch-lr-finder's wrapper for iterables
        loader = TrainDataLoaderIter(loader)
    try:
        with _library_speaks_our_way(progress):
            finder.range_test(
                loader,
                start_lr=finder_cfg.start_lr,
                end_lr=finder_cfg.end_lr,
                num_iter=finder_cfg.num_iter,
                step_mode="exp",
                smooth_f=finder_cfg.smooth_f,
                diverge_th=finder_cfg.diverge_th,
            )
    finally:
        finder.reset()  # weights and optimizer state exactly as before the test
    lrs, losses = finder.history["lr"], finder.history["loss"]
    needed = finder_cfg.skip_start + finder_cfg.skip_end + 10
    if len(lrs) < needed:
        raise LRFinderError(
            f"LR range test diverged after {len(lrs)} of {finder_cfg.num_iter} steps (LR {lrs[-1]:.3g}), too few "
            f"to read; lower lr_finder.end_lr, raise lr_finder.diverge_th, or set optimizer.lr and scheduler.lr_min"
        )
    return derive_lr_range(
        lrs, losses, finder_cfg.skip_start, finder_cfg.skip_end, finder_cfg.max_divisor, finder_cfg.min_drop
    )


@contextlib.contextmanager
def _library_speaks_our_way(progress: bool) -> Iterator[None]:
    """torch-lr-finder draws a bare tqdm bar and prints a line addressed to notebook users ("See the graph
    with {finder_name}.plot()"); it has no option for either. While the test runs, its bar is ours (labelled,
    shown only with `progress`) and its prints are swallowed: our log says what happened instead."""
    import torch_lr_finder.lr_finder as library

    original = library.tqdm
    library.tqdm = functools.partial(original, desc="LR range test", disable=not progress, leave=False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        library.tqdm = original


def draw(result: LRRange, finder_cfg: DictConfig, path: Path) -> Path:
    """lr_finder.png: the curve as the rule reads it (trimmed), LRMIN, LRMAX and the other marks."""
    steps = len(result.history["lr"])
    title = f"LR range test: {steps} steps, {finder_cfg.start_lr:g} to {finder_cfg.end_lr:g}"
    return plots.lr_range_test(asdict(result), finder_cfg.skip_start, finder_cfg.skip_end, title, path)


def find_lr_range(
    finder_cfg: DictConfig, probe: build.Probe, device: torch.device, out_dir: Path, progress: bool = True
) -> LRRange:
    """LRMIN/LRMAX for this probe: from the cache if an identical test ran before, else by running it.

    The probe (build.range_test_probe) has its own seed, `lr_finder.seed`, not the run's, so every seed of a
    sweep trains with the same LRMIN/LRMAX from one shared test, and seed statistics measure training noise,
    not range-test noise. Writes lr_finder.json and lr_finder.png into `out_dir` either way.
    """
    key = hashlib.sha256(json.dumps(probe.key, sort_keys=True).encode()).hexdigest()[:16]
    cache_entry = Path(os.path.expanduser(finder_cfg.cache_dir)) / key
    result = _read_cache(cache_entry) if finder_cfg.cache else None
    if result is not None:
        log.info("LR range test: the cached result of an identical test (%s)", cache_entry)
        shutil.copyfile(cache_entry / PLOT_NAME, out_dir / PLOT_NAME)
    else:
        why = "no cached result for this setup; later runs reuse it" if finder_cfg.cache else "lr_finder.cache=false"
        log.info(
            "LR range test: %d training steps, LR %g to %g, to derive LRMIN/LRMAX (%s)",
            finder_cfg.num_iter, finder_cfg.start_lr, finder_cfg.end_lr, why,
        )  # fmt: skip
        model, optimizer, loader = probe.build()
        result = run_range_test(model, optimizer, loader, device, finder_cfg, progress)
        draw(result, finder_cfg, out_dir / PLOT_NAME)
    result.cache_key = key
    (out_dir / JSON_NAME).write_text(json.dumps(asdict(result), indent=1))
    if finder_cfg.cache and not result.cached:
        _write_cache(cache_entry, out_dir)
    return result


def lrs_for_run(
    lr_max: float | str, lr_min: float | str, finder_cfg: DictConfig, range_test: Callable[[], LRRange]
) -> tuple[float, float, str]:
    """(LRMIN, LRMAX, where they came from): numbers from the config where given; where "auto", the range
    test's (run only then) times `lr_finder.scale` and `lr_finder.max_scale` / `min_scale`."""
    if lr_max != "auto" and lr_min != "auto":
        return float(lr_min), float(lr_max), "config"
    found = range_test()
    max_scale, min_scale = finder_cfg.scale * finder_cfg.max_scale, finder_cfg.scale * finder_cfg.min_scale
    source = "range test (cached)" if found.cached else "range test"
    if (max_scale, min_scale) != (1, 1):
        source += f" x {max_scale:g}" if max_scale == min_scale else f" x {min_scale:g} (LRMIN), {max_scale:g} (LRMAX)"
    lr_max = found.lr_max * max_scale if lr_max == "auto" else float(lr_max)
    lr_min = found.lr_min * min_scale if lr_min == "auto" else float(lr_min)
    if not lr_min < lr_max:
        raise ConfigError(
            f"LRMIN={lr_min:.4g} is not below LRMAX={lr_max:.4g} (from {source} and the config); "
            f"set both optimizer.lr and scheduler.lr_min, or leave both auto"
        )
    return lr_min, lr_max, source


def _read_cache(entry: Path) -> LRRange | None:
    try:
        result = LRRange(**json.loads((entry / JSON_NAME).read_text()))
    except (OSError, ValueError, TypeError, RecursionError):
        return None  # no entry, or a damaged one: run the test again
    numbers = (result.lr_min, result.lr_max, result.steepest_lr, result.min_loss_lr)
    if not all(isinstance(x, float | int) and math.isfinite(x) and x > 0 for x in numbers):
        return None  # a file from disk: LRs that are not positive numbers are a damaged entry too
    if not (entry / PLOT_NAME).is_file():
        return None
    result.cached = True
    return result


def _write_cache(entry: Path, out_dir: Path) -> None:
    """Copy the run's files into the cache atomically: a half-written entry is never visible."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}-"))
    files.shared_as_umask_says(staging, folder=True)
    for name in (JSON_NAME, PLOT_NAME):
        shutil.copyfile(out_dir / name, staging / name)
    shutil.rmtree(entry, ignore_errors=True)  # we only get here when the entry is absent or damaged
    try:
        os.replace(staging, entry)
    except OSError:  # another job of the sweep got there first; its entry is as good as ours
        shutil.rmtree(staging, ignore_errors=True)


def main() -> None:
    """`python -m resnet9.lr_find [overrides]`: run (or reuse) the range test alone and print LRMIN/LRMAX."""
    distributed.register_resolvers()
    _hydra_main()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    with exit_on_usage_error():
        schema.validate(cfg)
        device = build.device(cfg.device)
        build.seed_everything(cfg.seed, cfg.deterministic)
        settings = build.step_settings(cfg, device)
        probe = build.range_test_probe(cfg, build.dataset(cfg.data), settings)
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        result = find_lr_range(cfg.lr_finder, probe, device, out_dir, cfg.progress)
    source = "cache" if result.cached else "new test"
    print(f"LRMIN={result.lr_min:.4g} LRMAX={result.lr_max:.4g} ({source}; {result.rule})")
    print(f"plot and numbers: {out_dir / PLOT_NAME}, {out_dir / JSON_NAME}")


if __name__ == "__main__":
    main()
