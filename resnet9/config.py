"""Range and type checks that turn a bad override into one clear line, before any work starts.

Hydra itself already rejects unknown groups, options and keys (struct mode). What it cannot know is that
`epochs=0` or `optimizer.lr=-1` make no sense; `validate` checks those. Errors derive from Hydra's
`CompactHydraException`, so Hydra prints just the message (no traceback) and exits non-zero; in a multirun
only the offending job fails.
"""

from __future__ import annotations

import contextlib
import numbers
import random
import sys
from collections.abc import Iterator

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from resnet9 import distributed  # also registers the resolvers that name conf/config.yaml's output folders
from resnet9.augment import ENGINES
from resnet9.data import DataError

TRAIN_SIZE, TEST_SIZE = 50_000, 10_000
AUTO = "auto"
PRECISIONS = ("auto", "fp32", "bf16")


class UsageError(CompactHydraException):
    """Something the user can fix (config, data, environment). Its message is one line."""


class ConfigError(UsageError):
    """A config value out of range or of the wrong type."""


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _require(ok: bool, key: str, value: object, expected: str, example: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}; e.g. {key}={example}")


def _positive_or_auto(key: str, value: object, example: str) -> None:
    _require(value == AUTO or (_is_number(value) and value > 0), key, value, "a number > 0 or 'auto'", example)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first bad value and how to fix it."""
    _require(_is_int(cfg.epochs) and cfg.epochs >= 1, "epochs", cfg.epochs, "an integer >= 1", "24")
    _require(_is_int(cfg.batch_size) and cfg.batch_size >= 1, "batch_size", cfg.batch_size, "an integer >= 1", "512")
    _require(
        _is_int(cfg.eval_batch_size) and cfg.eval_batch_size >= 1,
        "eval_batch_size",
        cfg.eval_batch_size,
        "an integer >= 1",
        "1024",
    )
    _require(_is_int(cfg.seed), "seed", cfg.seed, "an integer", "0")
    _require(_is_int(cfg.log_every) and cfg.log_every >= 1, "log_every", cfg.log_every, "an integer >= 1", "10")
    resolve_device(cfg.device)
    _require(cfg.resume in ("auto", True, False), "resume", cfg.resume, "auto, true or false", "auto")

    _require(_is_number(cfg.model.width) and cfg.model.width > 0, "model.width", cfg.model.width, "a number > 0", "1.0")

    data = cfg.data
    for key, limit, size in (("limit_train", data.limit_train, TRAIN_SIZE), ("limit_test", data.limit_test, TEST_SIZE)):
        _require(
            limit is None or (_is_int(limit) and 10 <= limit <= size),
            f"data.{key}",
            limit,
            f"null or an integer in 10..{size}",
            "1000",
        )
    _require(
        _is_int(data.num_workers) and data.num_workers >= 0,
        "data.num_workers",
        data.num_workers,
        "an integer >= 0",
        "2",
    )
    processes = distributed.world().size
    if cfg.batch_size % processes:
        fitting = max(cfg.batch_size // processes, 1) * processes
        raise ConfigError(
            f"batch_size={cfg.batch_size} (the global batch) does not split evenly over {processes} torchrun "
            f"processes; use a multiple of {processes}, e.g. batch_size={fitting}"
        )
    train_size = data.limit_train or TRAIN_SIZE
    if cfg.batch_size > train_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the {train_size} training images, so an epoch would "
            f"have no full batch; lower batch_size or raise data.limit_train"
        )

    aug = cfg.augment
    _require(aug.engine in ENGINES, "augment.engine", aug.engine, "one of " + ", ".join(ENGINES), "device")
    _require(_is_int(aug.pad) and 0 <= aug.pad <= 16, "augment.pad", aug.pad, "an integer in 0..16", "4")
    _require(_is_int(aug.cutout) and 0 <= aug.cutout <= 32, "augment.cutout", aug.cutout, "an integer in 0..32", "8")

    lr, lr_min = cfg.optimizer.lr, cfg.scheduler.lr_min
    _positive_or_auto("optimizer.lr", lr, "0.4")
    _positive_or_auto("scheduler.lr_min", lr_min, "0.04")
    if _is_number(lr) and _is_number(lr_min) and lr_min >= lr:
        raise ConfigError(
            f"scheduler.lr_min={lr_min} must be below the peak optimizer.lr={lr}; lower lr_min or raise lr"
        )
    peak = cfg.scheduler.peak_epoch
    if not (_is_number(peak) and 0 < peak < cfg.epochs):
        raise ConfigError(
            f"scheduler.peak_epoch must lie inside the run (0 < peak_epoch < epochs={cfg.epochs}), got {peak!r}; "
            f"e.g. scheduler.peak_epoch={cfg.epochs * 5 / 24:.3g} (the mission's 5 of 24 epochs)"
        )

    finder = cfg.lr_finder
    _require(_is_number(finder.start_lr) and finder.start_lr > 0, "lr_finder.start_lr", finder.start_lr, "> 0", "1e-5")
    _require(
        _is_number(finder.end_lr) and finder.end_lr > finder.start_lr,
        "lr_finder.end_lr",
        finder.end_lr,
        "a number above lr_finder.start_lr",
        "10",
    )
    min_iter = finder.skip_start + finder.skip_end + 10
    _require(
        _is_int(finder.num_iter) and finder.num_iter >= min_iter,
        "lr_finder.num_iter",
        finder.num_iter,
        f"an integer >= {min_iter} (skip_start + skip_end + 10)",
        "100",
    )
    _require(_is_int(finder.seed), "lr_finder.seed", finder.seed, "an integer", "0")
    _require(_is_number(finder.scale) and finder.scale > 0, "lr_finder.scale", finder.scale, "a number > 0", "1.0")
    _require(
        _is_number(finder.min_drop) and 0 < finder.min_drop < 1,
        "lr_finder.min_drop",
        finder.min_drop,
        "a number in (0, 1)",
        "0.1",
    )
    _require(
        _is_number(finder.max_divisor) and finder.max_divisor >= 1,
        "lr_finder.max_divisor",
        finder.max_divisor,
        "a number >= 1",
        "1",
    )

    _require(cfg.precision in PRECISIONS, "precision", cfg.precision, "one of " + ", ".join(PRECISIONS), "auto")
    _require(
        _is_number(cfg.label_smoothing) and 0 <= cfg.label_smoothing < 1,
        "label_smoothing", cfg.label_smoothing, "a number in [0, 1)", "0.2",
    )  # fmt: skip
    _require(
        _is_number(cfg.ema.decay) and 0 <= cfg.ema.decay < 1, "ema.decay", cfg.ema.decay, "a number in [0, 1)", "0.99"
    )
    _require(
        cfg.ema.decay == 0 or (_is_int(cfg.ema.start_epoch) and 1 <= cfg.ema.start_epoch <= cfg.epochs),
        "ema.start_epoch", cfg.ema.start_epoch, f"an integer in 1..epochs={cfg.epochs}", "20",
    )  # fmt: skip

    mode = cfg.logger.get("mode")
    _require(
        mode in (None, "offline", "online", "disabled"),
        "logger.mode",
        mode,
        "one of offline, online, disabled",
        "offline",
    )


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else cpu. An unavailable or unknown device is a ConfigError.

    Under torchrun every process takes the GPU of its local rank: device=auto or cuda gives cuda:LOCAL_RANK.
    """
    if name == AUTO:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}; e.g. device=auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible to torch; use device=cpu or device=auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}; e.g. device=auto")
    here = distributed.world()
    if device.type == "cuda" and here.is_parallel:
        if device.index is not None:
            raise ConfigError(f"device={name} under torchrun: each process uses cuda:LOCAL_RANK; use device=cuda")
        device = torch.device("cuda", here.local_rank)
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`: bf16, or None for plain fp32.

    auto = bf16 on CUDA (tensor cores; BatchNorm keeps fp32 statistics under autocast) and fp32 on CPU, where
    CPUs without native bf16 (like our 2-core Xeon) run it slower than fp32.
    """
    if precision == "bf16" or (precision == AUTO and device.type == "cuda"):
        return torch.bfloat16
    return None


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally insist on deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True  # autotuned kernels; the input shape never changes


@contextlib.contextmanager
def data_errors_as_usage_errors() -> Iterator[None]:
    """Let a DataError end the run as a one-line message, like a config error."""
    try:
        yield
    except DataError as err:
        raise UsageError(str(err)) from None


@contextlib.contextmanager
def exit_on_usage_error() -> Iterator[None]:
    """A single run ends on a UsageError with its one-line message and exit status 2.

    In a multirun the error propagates instead: Hydra marks that job failed, runs the others, and reports
    the failure once the sweep is done.
    """
    try:
        with data_errors_as_usage_errors():
            yield
    except UsageError as err:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
