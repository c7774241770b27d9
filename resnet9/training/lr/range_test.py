"""LR range test (torch-lr-finder) -> LRMIN and LRMAX for One Cycle, with a plot and an on-disk cache.

The test trains the freshly initialised model for `num_iter` batches while the LR grows exponentially from
`start_lr` to `end_lr`, records the (exponentially smoothed) loss, stops early once the loss diverges, and
then restores the model and optimizer exactly (torch-lr-finder's `reset`).

How the curve becomes LRMIN and LRMAX is `lr_rules`' business (`lr_finder.rule` picks one of its rules).
The cache keeps the curve, not what was read from it: a run that reads the same curve another way (another
rule, divisor or trim) reuses the test. No rule fits every curve (torch-lr-finder's maintainers say as much):
the plot shows every rule's pick, and `optimizer.lr` / `scheduler.lr_min` accept numbers that override
either LR, `lr_finder.scale` both.

The command `python -m resnet9.lr_find [overrides]` (resnet9/lr_find.py) runs (or reuses) the test alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from resnet9.analysis import plots
from resnet9.core import files
from resnet9.core.errors import ConfigError, UsageError
from resnet9.data.datasets import ImageData
from resnet9.training.config import schema
from resnet9.training.engine import build
from resnet9.training.engine.loop import Batches, StepSettings
from resnet9.training.lr import rules as lr_rules

log = logging.getLogger(__name__)

JSON_NAME, PLOT_NAME = "lr_finder.json", "lr_finder.png"
CURVE_NAME = "curve.json"  # a cache entry: the recorded curve alone


class LRFinderError(UsageError):
    """The range test produced a curve too short to read."""


@dataclass
class RangeTestSetup:
    """What an LR range test trains, built only when the cache has no answer (`probe` makes it),
    and what keys that cache."""

    key: dict  # everything that shapes the curve
    build: Callable[[], tuple[nn.Module, torch.optim.Optimizer, Iterable]]


def probe(cfg: DictConfig, data: ImageData, settings: StepSettings) -> RangeTestSetup:
    """What the LR range test trains: a fresh model, optimizer and training loader, all seeded with
    `lr_finder.seed` (not the run's seed, and without touching the run's random state), and the description
    of exactly that setup which keys the range-test cache."""
    finder = cfg.lr_finder

    def make() -> tuple[nn.Module, torch.optim.Optimizer, Batches]:
        on = settings.device
        with torch.random.fork_rng(devices=[on] if on.type == "cuda" else []):
            torch.manual_seed(finder.seed)
            network = build.model(cfg.model, settings)
        loader = build.train_loader(cfg, data, settings, finder.seed)
        return network, build.optimizer(cfg.optimizer, network, lr=finder.start_lr), loader

    return RangeTestSetup(key=_range_test_key(cfg, settings), build=make)


def _range_test_key(cfg: DictConfig, settings: StepSettings) -> dict:
    """Everything that shapes the range test's curve: the model, optimizer, augmentation and data options whole
    (a new option's keys take part by themselves); not the LRs it is meant to derive, nor how the curve is read
    or cached (the schema marks those: another reading of the same curve reuses the test)."""
    optimizer_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    optimizer_cfg.pop("lr", None)
    finder = OmegaConf.to_container(cfg.lr_finder, resolve=True)
    for key in schema.marked(schema.LRFinderConfig, "reads_curve"):
        finder.pop(key, None)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    data_cfg["root"] = str(Path(to_absolute_path(cfg.data.root)).expanduser())
    for key in ("download", "limit_test", "num_workers"):  # what the curve never sees
        data_cfg.pop(key, None)
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "optimizer": optimizer_cfg,
        "augment": OmegaConf.to_container(cfg.augment, resolve=True),
        "batch_size": cfg.batch_size,
        "data": data_cfg,
        "lr_finder": finder,
        "device": settings.device.type,
    }


@dataclass
class LRRange:
    lr_min: float
    lr_max: float
    rule: str  # lr_finder.rule
    reading: str  # the rule in words, as applied
    picks: dict[str, float] = field(default_factory=dict)  # every rule's LRMAX on this curve
    history: dict[str, list[float]] = field(default_factory=dict)  # the whole curve, untrimmed
    cached: bool = False
    cache_key: str = ""


def derive_lr_range(history: dict[str, list[float]], finder_cfg: DictConfig) -> LRRange:
    """Read LRMIN/LRMAX off a recorded curve with the configured rule (lr_rules), after checking it is long
    enough to read."""
    lrs, losses = history["lr"], history["loss"]
    if len(lrs) < finder_cfg.skip_start + finder_cfg.skip_end + 10:
        raise LRFinderError(
            f"LR range test diverged after {len(lrs)} of {finder_cfg.num_iter} steps (LR {lrs[-1]:.3g}), too few "
            f"to read; lower lr_finder.end_lr, raise lr_finder.diverge_th, or set optimizer.lr and scheduler.lr_min"
        )
    curve = lr_rules.Curve.trimmed(lrs, losses, finder_cfg.skip_start, finder_cfg.skip_end)
    rule = finder_cfg.get("rule", lr_rules.DEFAULT_RULE)
    lr_min, lr_max, reading = lr_rules.lr_pair(curve, rule, finder_cfg.max_divisor, finder_cfg.min_drop)
    history = {"lr": [float(x) for x in lrs], "loss": [float(x) for x in losses]}
    return LRRange(lr_min, lr_max, rule, reading, lr_rules.picks(curve), history)


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
    return derive_lr_range(finder.history, finder_cfg)


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
    """lr_finder.png: the curve as the rule reads it (trimmed), LRMIN, LRMAX and every rule's pick."""
    steps = len(result.history["lr"])
    title = f"LR range test: {steps} steps, {finder_cfg.start_lr:g} to {finder_cfg.end_lr:g}; LRMAX rule: {result.rule}"
    return plots.lr_range_test(asdict(result), finder_cfg.skip_start, finder_cfg.skip_end, title, path)


def find_lr_range(
    finder_cfg: DictConfig, probe: RangeTestSetup, device: torch.device, out_dir: Path, progress: bool = True
) -> LRRange:
    """LRMIN/LRMAX for this probe, read off the curve of an identical earlier test if the cache has one, else
    off a new test's.

    The probe has its own seed, `lr_finder.seed`, not the run's, so every seed of a
    sweep trains with the same LRMIN/LRMAX from one shared test, and seed statistics measure training noise,
    not range-test noise. Writes lr_finder.json now and lr_finder.png (on the figure thread) into `out_dir`.
    """
    cache_entry = cache_entry_of(finder_cfg, probe)
    if not finder_cfg.cache:
        result = _new_test(finder_cfg, probe, device, progress, why="lr_finder.cache=false")
    else:
        _check_cache_folder(cache_entry.parent)
        history = _read_cache(cache_entry)
        if history is None:  # one job runs the test; the jobs started with it wait here, then read its curve
            with _entry_locked(cache_entry):
                history = _read_cache(cache_entry)
                if history is None:
                    why = _why_no_cached_curve(cache_entry)
                    result = _new_test(finder_cfg, probe, device, progress, why)
                    _write_cache(cache_entry, result.history)
        if history is not None:
            log.info("LR range test: the curve of an identical earlier test (%s)", cache_entry)
            result = derive_lr_range(history, finder_cfg)
            result.cached = True
    result.cache_key = cache_entry.name
    files.write_json(out_dir / JSON_NAME, asdict(result))
    plots.in_background(draw, result, finder_cfg, out_dir / PLOT_NAME)
    return result


def cache_entry_of(finder_cfg: DictConfig, probe: RangeTestSetup) -> Path:
    """The cache entry (a folder) of this probe's curve: `lr_finder.cache_dir`/<a digest of the setup>."""
    key = hashlib.sha256(json.dumps(probe.key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(os.path.expanduser(finder_cfg.cache_dir)) / key


def _new_test(finder_cfg: DictConfig, probe: RangeTestSetup, device: torch.device, progress: bool, why: str) -> LRRange:
    log.info(
        "LR range test: %d training steps, LR %g to %g, to derive LRMIN/LRMAX (%s)",
        finder_cfg.num_iter, finder_cfg.start_lr, finder_cfg.end_lr, why,
    )  # fmt: skip
    model, optimizer, loader = probe.build()
    return run_range_test(model, optimizer, loader, device, finder_cfg, progress)


@contextlib.contextmanager
def _entry_locked(entry: Path) -> Iterator[None]:
    """The cache entry's lock (an flock on `<entry>.lock` beside it) for the block: jobs of a sweep that start
    together on a cold cache (a SLURM array, joblib) would otherwise each run the same test. The lock goes with
    the process, however it ends, so a killed job never leaves the others waiting; the lock file goes with the
    block. A cache folder that cannot hold the lock file (read-only, full) is used without it: at worst the test
    runs twice, as before."""
    lock_path = entry.with_name(f"{entry.name}.lock")
    descriptor = _lock(lock_path)
    try:
        yield
    finally:
        if descriptor is not None:
            with contextlib.suppress(OSError):  # removed while locked: a later job locks a file of its own
                lock_path.unlink()
            os.close(descriptor)  # (releases the lock)


def _lock(path: Path) -> int | None:
    """An open descriptor holding the exclusive flock on `path`, waiting for it if another process holds it; None
    where the file cannot be made. A holder removes the file before it unlocks, so a lock won on a file no longer
    at `path` is stale: then the new file is locked instead."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # (the umask decides who shares it)
        except OSError:
            return None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("LR range test: another job is running it for this setup; waiting for its curve (%s)", path)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):
            held, named = os.fstat(descriptor), os.stat(path)
            if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
                return descriptor
        os.close(descriptor)


def lrs_for_run(
    lr_max: float | str, lr_min: float | str | None, finder_cfg: DictConfig, range_test: Callable[[], LRRange]
) -> tuple[float | None, float, str]:
    """(LRMIN, LRMAX, where they came from): numbers from the config where given; where "auto", the range
    test's (run only then) times `lr_finder.scale` and `lr_finder.max_scale` / `min_scale`. A schedule without
    `lr_min` (a torch scheduler) gets LRMIN from the range test when one runs for LRMAX, else none."""
    if lr_max != "auto" and lr_min != "auto":
        return None if lr_min is None else float(lr_min), float(lr_max), "config"
    found = range_test()
    max_scale, min_scale = finder_cfg.scale * finder_cfg.max_scale, finder_cfg.scale * finder_cfg.min_scale
    source = "range test (cached)" if found.cached else "range test"
    if (max_scale, min_scale) != (1, 1):
        source += f" x {max_scale:g}" if max_scale == min_scale else f" x {min_scale:g} (LRMIN), {max_scale:g} (LRMAX)"
    lr_max = found.lr_max * max_scale if lr_max == "auto" else float(lr_max)
    lr_min = found.lr_min * min_scale if lr_min in ("auto", None) else float(lr_min)
    history = found.history
    curve = lr_rules.Curve.trimmed(history["lr"], history["loss"], finder_cfg.skip_start, finder_cfg.skip_end)
    for doubt in lr_rules.doubts(curve, lr_min, lr_max):
        log.warning(doubt)
    if not lr_min < lr_max:
        raise ConfigError(
            f"LRMIN={lr_min:.4g} is not below LRMAX={lr_max:.4g} (from {source} and the config); "
            f"set both optimizer.lr and scheduler.lr_min, or leave both auto"
        )
    return lr_min, lr_max, source


def _check_cache_folder(folder: Path) -> None:
    """Refuse, before the test runs, a cache folder that cannot be one: a file somewhere on its path."""
    for path in (folder, *folder.parents):
        try:
            exists = path.exists()
        except OSError:  # a folder on the way we may not search: reading and writing the cache say so
            return
        if exists:
            if not path.is_dir():
                raise UsageError(
                    f"lr_finder.cache_dir={folder} cannot be a folder: {path} is a file; point RESNET9_CACHE or "
                    f"lr_finder.cache_dir at a folder, or set lr_finder.cache=false"
                )
            return


def _why_no_cached_curve(entry: Path) -> str:
    with contextlib.suppress(OSError):  # (a folder on the way we may not search: as if there were none)
        if (entry / CURVE_NAME).exists():
            return f"the cached curve {entry / CURVE_NAME} is unreadable or damaged; this test replaces it"
    return "no cached result for this setup; later runs reuse it"


def _read_cache(entry: Path) -> dict[str, list[float]] | None:
    """The cached curve, or None when there is none or it is damaged (then the test runs again). A file from
    disk: it must be two equally long lists of finite numbers, the LRs positive and growing."""
    try:
        history = json.loads((entry / CURVE_NAME).read_text())
        lrs, losses = history["lr"], history["loss"]
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None
    numbers = [*lrs, *losses] if isinstance(lrs, list) and isinstance(losses, list) else None
    if not numbers or len(lrs) != len(losses) or not all(type(x) in (float, int) for x in numbers):
        return None
    if not (np.all(np.isfinite(numbers)) and lrs[0] > 0 and np.all(np.diff(lrs) > 0)):
        return None
    return {"lr": [float(x) for x in lrs], "loss": [float(x) for x in losses]}


def _write_cache(entry: Path, history: dict[str, list[float]]) -> None:
    """Store the curve atomically: a half-written entry is never visible. A cache that cannot be written (full
    disk, no permission) costs later runs a test, not this run its result: a warning, not an error."""
    staging = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}-"))
        files.shared_as_umask_says(staging, folder=True)
        files.write_json(staging / CURVE_NAME, history, indent=None)
    except OSError as err:
        log.warning("LR range test: cannot cache the curve in %s (%s); later runs test again", entry.parent, err)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        return
    shutil.rmtree(entry, ignore_errors=True)  # we only get here when the entry is absent or damaged
    try:
        os.replace(staging, entry)
    except OSError:  # another job of the sweep got there first; its entry is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
