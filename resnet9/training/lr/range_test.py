"""The LR range test (torch-lr-finder) and its on-disk cache: what the test trains (`probe`), and its curve
(`curve`): an identical earlier test's from the cache, else a new test's, stored for the next run.

The test trains the freshly initialised model for `num_iter` batches while the LR grows exponentially from
`start_lr` to `end_lr`, records the (exponentially smoothed) loss, stops early once the loss diverges, and
then restores the model and optimizer exactly (torch-lr-finder's `reset`). The cache keeps the curve, not what
was read from it: a run that reads the same curve another way (another rule, divisor or trim) reuses the test.
How a curve becomes LRMIN and LRMAX is rules.py's; the path from the config to a run's LRs is derive.py's.
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from resnet9.core import files
from resnet9.core.errors import UsageError
from resnet9.data.datasets import ImageData
from resnet9.training.config import schema
from resnet9.training.engine import build
from resnet9.training.engine.loop import Batches, StepSettings

log = logging.getLogger(__name__)

JSON_NAME, PLOT_NAME = "lr_finder.json", "lr_finder.png"
CURVE_NAME = "curve.json"  # a cache entry: the recorded curve alone


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


def run_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader | Iterable,
    device: torch.device,
    finder_cfg: DictConfig,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Run the test and restore model and optimizer; the recorded curve: {"lr": [...], "loss": [...]}."""
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
    return {"lr": [float(x) for x in finder.history["lr"]], "loss": [float(x) for x in finder.history["loss"]]}


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


@dataclass
class RecordedCurve:
    """A range test's curve, untrimmed: every step's LR and smoothed loss; whether it came from the cache, and
    the cache entry's name."""

    history: dict[str, list[float]]
    cached: bool
    cache_key: str


def curve(finder_cfg: DictConfig, setup: RangeTestSetup, device: torch.device, progress: bool = True) -> RecordedCurve:
    """This setup's curve: an identical earlier test's from the cache, else a new test's (then cached).

    The probe has its own seed, `lr_finder.seed`, not the run's, so every seed of a sweep trains with the same
    LRMIN/LRMAX from one shared test, and seed statistics measure training noise, not range-test noise. Jobs that
    start together on a cold cache run one test: the others wait for its curve (`_entry_locked`)."""
    entry = cache_entry_of(finder_cfg, setup)
    if not finder_cfg.cache:
        return RecordedCurve(_new_test(finder_cfg, setup, device, progress, "lr_finder.cache=false"), False, entry.name)
    _check_cache_folder(entry.parent)
    history = _read_cache(entry)
    if history is None:  # one job runs the test; the jobs started with it wait here, then read its curve
        with _entry_locked(entry):
            history = _read_cache(entry)
            if history is None:
                history = _new_test(finder_cfg, setup, device, progress, _why_no_cached_curve(entry))
                _write_cache(entry, history)
                return RecordedCurve(history, False, entry.name)
    log.info("LR range test: the curve of an identical earlier test (%s)", entry)
    return RecordedCurve(history, True, entry.name)


def cache_entry_of(finder_cfg: DictConfig, probe: RangeTestSetup) -> Path:
    """The cache entry (a folder) of this probe's curve: `lr_finder.cache_dir`/<a digest of the setup>."""
    key = hashlib.sha256(json.dumps(probe.key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(os.path.expanduser(finder_cfg.cache_dir)) / key


def _new_test(
    finder_cfg: DictConfig, probe: RangeTestSetup, device: torch.device, progress: bool, why: str
) -> dict[str, list[float]]:
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
