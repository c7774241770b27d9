"""The training state, and checkpoints: everything that changes while a run trains, in one object.

`TrainState` owns the model, optimizer, scheduler, EMA, the training loader (which saves its own random
state and its place in the epoch), the epoch's running sums when a stop comes mid-epoch, every global random
state (torch, CUDA, NumPy, Python) and the run's record (metrics.json). `state_dict()` / `load_state_dict()`
round-trip all of it, so a checkpoint is "save the state" and a resume is "load the state":

    last.pt = {format, model (the weights evaluated), epoch, config, lr_min, lr_max, test_acc,
               train_state: TrainState.state_dict()}

Everything in it is tensors and plain values: `torch.load(weights_only=True)` reads it, never running code.

`resume=auto` (default): a run whose output folder already holds such a checkpoint continues from it --
rerun the same folder (`hydra.run.dir=...`) after a crash, a kill or a pre-emption. A checkpoint of another
configuration there is refused with one line; `resume=false` starts over in place; `resume=true` is `auto` that
refuses to start over (a folder without the checkpoint: one line, nothing trained). With a fixed seed on the
CPU the resumed run ends exactly like an uninterrupted one, for both augmentation engines (tested).
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim.swa_utils import AveragedModel

from resnet9 import __version__
from resnet9.core.errors import UsageError, in_multirun
from resnet9.training.config import schema, targets
from resnet9.training.engine.loop import EpochSums

DEVICE_ENGINE = "resnet9.data.augment.Augmentation"  # runs on the training device unless engine=albumentations
# The layouts of the files a run writes, bumped when a reader of the old layout could not read the new one.
# A file of a newer format is refused in one line; older ones are read (tests/fixtures/old_runs keeps one of each).
CHECKPOINT_FORMAT = 2  # 1: before the TrainState (no "format" key)
METRICS_FORMAT = 2  # 1: before metrics.json had a "format" key (resnet9 0.1.0)

# Settings that may differ between a run and its resumption: they change no result (the schema marks them, so
# a new key says it in one place). `device` may name another device of the kind the run trained on (auto for
# cuda, cuda:1 for cuda:0), not another kind (cpu for cuda, whose random states and kernels differ):
# `read_resumable` compares the kind actually used. And `data.num_workers` is free for the device engine only,
# which has no workers (`_comparable`: an albumentations pipeline draws its augmentations in the workers, so
# their number changes the draws). On a CPU none changes a number the run computes: tested.
FREE_TO_CHANGE = tuple(schema.marked(schema.TrainConfig, "free_on_resume"))


class Stopwatch:
    """Where a job's wall time goes: seconds spent in each phase (setup, warm-up, train, eval, write) and in all."""

    PHASES = ("setup", "warmup", "train", "eval", "write")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.spent: dict[str, float] = dict.fromkeys(self.PHASES, 0.0)
        self.open: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.open[name] = time.perf_counter()
        try:
            yield
        finally:
            self.spent[name] += time.perf_counter() - self.open.pop(name)

    def seconds(self) -> dict[str, float]:
        """{setup_s, warmup_s, train_s, eval_s, write_s, wall_s} so far (a phase still open counts up to now)."""
        now = time.perf_counter()
        spent = {name: self.spent[name] + now - self.open.get(name, now) for name in self.PHASES}
        return {**{f"{name}_s": seconds for name, seconds in spent.items()}, "wall_s": now - self.started}


class RunRecord:
    """metrics.json: what the run is (config, device, LRs, sizes), what it measured so far, and its status.

    `data` is the JSON document itself. The measurements carry over a resume (`state_dict`); the facts about
    the run are written anew by the resumed run. `clock` times this job (this process's part of it): every
    `document()` carries its phases as `timings`.
    """

    CARRIED_OVER = (
        "epochs",
        "lr_per_step",
        "first_step_s",
        "final_test_acc",
        "best_test_acc",
        "best_epoch",
        "train_time_s",
        "lr_source",
        "tracker_run_id",
        "stopped_early",  # a resumed run that a callback had ended stays ended
    )

    def __init__(self, clock: Stopwatch | None = None, **facts: Any) -> None:
        self.clock = clock or Stopwatch()
        self.data: dict[str, Any] = {"format": METRICS_FORMAT, "status": "running", **facts, "epochs": [],
                                     "lr_per_step": []}  # fmt: skip

    def document(self) -> dict[str, Any]:
        """metrics.json as of now, with the job's timings."""
        return {**self.data, "timings": self.clock.seconds()}

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def update(self, **values: Any) -> None:
        self.data.update(values)

    def add_epoch(self, row: dict[str, Any], lrs: list[float]) -> None:
        """One epoch's row; final, best and the total training time follow from the rows."""
        self.data["epochs"].append(row)
        self.data["lr_per_step"].extend(lrs)
        best = max(self.data["epochs"], key=lambda r: r["test_acc"])
        self.update(
            final_test_acc=row["test_acc"],
            best_test_acc=best["test_acc"],
            best_epoch=best["epoch"],
            train_time_s=sum(r["train_time_s"] for r in self.data["epochs"]),
        )

    def state_dict(self) -> dict[str, Any]:
        return {key: self.data[key] for key in self.CARRIED_OVER if key in self.data}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data.update(state)


@dataclass
class TrainState:
    """Everything a run changes as it trains; `epoch` counts the complete epochs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None
    loader: Any  # augment.DeviceLoader or AlbumentationsLoader: both have state_dict()/load_state_dict()
    record: RunRecord
    ema_start_epoch: int = 1
    epoch: int = 0
    epoch_sums: EpochSums | None = None  # the running sums of an epoch a stop interrupted
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaling (its scale adapts as training goes)
    callbacks: dict[str, Any] = field(default_factory=dict)  # named; those with state_dict() are checkpointed

    def stop_after_epoch(self, reason: str) -> None:
        """End the run after this epoch, as completed (a callback's way: early stopping). The record says at which
        epoch and why, in the checkpoint written next too, so a rerun of the folder does not train on."""
        self.record.update(stopped_early={"epoch": self.epoch, "reason": reason})

    def averaging(self, epoch: int) -> AveragedModel | None:
        """The EMA that epoch `epoch` updates (and evaluates), or None before `ema.start_epoch`."""
        return self.ema if self.ema is not None and epoch >= self.ema_start_epoch else None

    def evaluated_model(self) -> nn.Module:
        """The weights the run reports: the EMA once it has averaged a step, else the trained model."""
        if self.ema is not None and int(self.ema.n_averaged) > 0:
            return self.ema.module
        return self.model

    def device(self) -> torch.device:
        """Where the model trains (whose random state a checkpoint keeps)."""
        return next(self.model.parameters()).device

    def is_finite(self) -> bool:
        """No NaN or inf in the weights nor in the running epoch's losses (one read from the device): a stop
        mid-epoch may come after a divergence that only the epoch's end would have read."""
        checks = [torch.isfinite(p).all() for p in self.model.parameters()]
        if self.epoch_sums is not None and self.epoch_sums.step_losses:
            checks.append(torch.isfinite(torch.stack(self.epoch_sums.step_losses)).all())
        return bool(torch.stack(checks).all())

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "loader": self.loader.state_dict(),
            "progress": self.epoch_sums.state_dict()
            if self.epoch_sums is not None
            else None,  # (the key checkpoints have)
            "rng": capture_rng(self.device()),
            "record": self.record.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "callbacks": {
                name: callback.state_dict()
                for name, callback in self.callbacks.items()
                if callable(getattr(callback, "state_dict", None))
            },  # fmt: skip
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.loader.load_state_dict(state["loader"])
        device = self.device()
        self.epoch_sums = EpochSums.from_state(state["progress"], device) if state["progress"] else None
        restore_rng(state["rng"], device)
        self.record.load_state_dict(state["record"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for name, saved in (state.get("callbacks") or {}).items():  # (none in checkpoints from before callbacks)
            callback = self.callbacks.get(name)
            if saved is not None and callable(getattr(callback, "load_state_dict", None)):
                callback.load_state_dict(saved)

    @contextlib.contextmanager
    def untouched(self) -> Iterator[None]:
        """Whatever the block does to the model, the optimizer and the random states is undone at its end."""
        model = {key: value.clone() for key, value in self.model.state_dict().items()}
        optimizer = copy.deepcopy(self.optimizer.state_dict())
        rng = capture_rng(self.device())
        try:
            yield
        finally:
            self.model.load_state_dict(model)
            self.optimizer.load_state_dict(optimizer)
            restore_rng(rng, self.device())

    def resume(self, checkpoint: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint `read_resumable` accepted. Its content is a file's: one line if it does not
        fit this run, rather than whatever error the objects loading it raise."""
        reason = "odd values"
        try:
            self.load_state_dict(checkpoint["train_state"])
            fits = isinstance(self.epoch, int) and self.epoch >= 0
            fits = fits and all(isinstance(self.record.get(key), list) for key in ("epochs", "lr_per_step"))
        except Exception as err:  # KeyError, TypeError, ValueError, RuntimeError ... from crafted or damaged state
            fits, reason = False, type(err).__name__
        if not fits:
            raise UsageError(
                f"cannot resume from {path}: its training state does not fit this run ({reason}); rerun with "
                f"resume=false to start over in {path.parent}"
            )

    def checkpoint(self, config: dict[str, Any]) -> dict[str, Any]:
        """last.pt: the state, plus what evaluate and predict read (the weights evaluated, the config)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": __version__,  # a resume continues only under the same major.minor version
            "device_type": self.device().type,  # cpu or cuda: what a resume must match
            "model": self.evaluated_model().state_dict(),
            "epoch": self.epoch,
            "config": config,
            "lr_min": self.record["lr_min"],
            "lr_max": self.record["lr_max"],
            "test_acc": self.record.get("final_test_acc"),
            "classes": self.record.get("classes"),  # the outputs' names, for predict
            "image_shape": self.record.get("image_shape"),  # (height, width, channels) predict resizes to
            "test_digest": self.record.get("test_digest"),  # the test images it was scored on, for evaluate
            "train_state": self.state_dict(),
        }


def capture_rng(device: torch.device) -> dict[str, Any]:
    """Every global random state a run on `device` draws from, as tensors and plain lists (loadable with
    torch.load(weights_only=True)). On CUDA, that device's generator only: saving every visible GPU's made a
    resume on a machine with fewer GPUs fail (torch.cuda.set_rng_state_all needs as many as were saved)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Set the states `capture_rng` saved; the saved CUDA state goes to `device`, the one training now.

    Checkpoints written before this saved every visible GPU's state, in device order: the training device's
    is the one at its index (the first one, where it had fewer GPUs than that index)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_rng_state(state["cuda"][index if index < len(state["cuda"]) else 0], device)
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def read_resumable(path: Path, cfg: DictConfig, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint to continue from, or None to start fresh. Refuses one of another configuration, a
    `last.pt` that is not a file (the run would train, then fail to save), and `resume=true` without one."""
    if path.exists() and not path.is_file():
        raise UsageError(f"{path} is not a file, so no checkpoint can be written there; remove it or run elsewhere")
    if cfg.resume is True and not path.is_file():
        where = "hydra.sweep.dir=<its folder>" if in_multirun() else "hydra.run.dir=<its folder>"
        raise UsageError(
            f"resume=true but {path.parent} holds no last.pt to resume; rerun where the interrupted run was "
            f"({where}), or use resume=auto to start over when there is none"
        )
    if cfg.resume is False or not path.is_file():
        return None
    start_over = f"use a new output folder, or resume=false to start over in {path.parent}"
    checkpoint = _load(path, start_over)  # a file no rerun can read: only starting over helps
    if isinstance(checkpoint, dict) and "train_state" not in checkpoint and "optimizer" in checkpoint:
        raise UsageError(f"cannot resume from {path}: it was written by an older resnet9; {start_over}")
    _check_not_newer(checkpoint, path, start_over)
    if not _resumable_shape(checkpoint) or not _is_format(checkpoint.get("format"), CHECKPOINT_FORMAT):
        raise UsageError(f"cannot resume from {path}: it is not a resnet9 training checkpoint; {start_over}")
    _check_same_minor_version(checkpoint, path)
    fix = f"rerun with the same overrides, {start_over}"
    differences = _differences(_comparable(checkpoint["config"]), _comparable(OmegaConf.to_container(cfg)))
    kind = checkpoint.get("device_type", device.type)  # (unknown in checkpoints from before it)
    if not (isinstance(kind, str) and kind == device.type):
        differences.insert(0, f"a device of kind {_as_shown(kind)} there, {device.type!r} now")
    if differences:
        raise UsageError(f"cannot resume from {path}: its run had {'; '.join(differences[:3])}; {fix}")
    return checkpoint


def _resumable_shape(checkpoint: Any) -> bool:
    """The parts read before the state is loaded: a dict with a config, the LRs, and a state with its record."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("config"), dict):
        return False
    numbers = isinstance(checkpoint.get("lr_max"), float | int)
    numbers = numbers and isinstance(checkpoint.get("lr_min"), float | int | None)  # (none: a torch schedule's)
    train_state = checkpoint.get("train_state")
    record = train_state.get("record") if isinstance(train_state, dict) else None
    return numbers and isinstance(record, dict) and isinstance(record.get("lr_source"), str)


@dataclass
class RunLRs:
    """What a run trains with: LRMIN (None for a schedule without one), LRMAX, where they came from, and the
    range test's reading (training/lr/rules.py's LRRange) when one was read in this process, else None."""

    lr_min: float | None
    lr_max: float
    source: str
    reading: Any = None


def saved_lrs(checkpoint: dict[str, Any]) -> RunLRs:
    """The LRs of the run a checkpoint belongs to: a resumed run trains with these (no range test again)."""
    return RunLRs(checkpoint["lr_min"], checkpoint["lr_max"], checkpoint["train_state"]["record"]["lr_source"])


def trained_fix(flag: str) -> str:
    """How to name a checkpoint: `flag` is the command's option (evaluate: "checkpoint=", predict: "--checkpoint ")."""
    return f"pass {flag}<run folder>/last.pt as written by resnet9.train"


def read_trained(path: Path, device: torch.device, flag: str = "checkpoint=") -> dict[str, Any]:
    """A checkpoint to evaluate or predict with: it must hold model weights and the run's config, in a format
    this version reads (1: before the TrainState, or CHECKPOINT_FORMAT)."""
    fix = trained_fix(flag)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}; {fix}")
    checkpoint = _load(path, fix, device)
    if not isinstance(checkpoint, dict) or not {"model", "config"} <= checkpoint.keys():
        raise UsageError(f"{path} holds no model weights and config; {fix}")
    _check_not_newer(checkpoint, path, fix)
    if not _is_format(checkpoint.get("format", 1), 1, CHECKPOINT_FORMAT):
        raise UsageError(
            f"{path} has checkpoint format {_as_shown(checkpoint['format'])}, which this resnet9 does not know (it "
            f"reads 1 and {CHECKPOINT_FORMAT}); read it with the resnet9 that wrote it, or {fix}"
        )
    return checkpoint


def _check_not_newer(checkpoint: Any, path: Path, fix: str) -> None:
    """A checkpoint of a format after this code's: one line saying to upgrade."""
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if type(found) is int and found > CHECKPOINT_FORMAT:
        by = checkpoint.get("version")
        by = f"resnet9 {by}" if isinstance(by, str) and len(by) < 20 else "a newer resnet9"
        raise UsageError(
            f"{path} was written by {by} (checkpoint format {found}; resnet9 {__version__} reads up to "
            f"{CHECKPOINT_FORMAT}); upgrade resnet9 to read it, or {fix}"
        )


def _check_same_minor_version(checkpoint: dict[str, Any], path: Path) -> None:
    """A resume continues exactly only under the code that began the run (the same major.minor version)."""
    written_by = checkpoint.get("version")
    if isinstance(written_by, str) and _minor(written_by) == _minor(__version__):
        return
    shown = f"resnet9 {written_by}" if isinstance(written_by, str) and len(written_by) < 20 else "a resnet9 before 0.2"
    raise UsageError(
        f"cannot resume from {path}: it was written by {shown}, and this is resnet9 {__version__}, whose training "
        f"may differ; evaluate it (resnet9-evaluate checkpoint={path}), or continue in a new output folder"
    )


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _is_format(value: Any, *known: int) -> bool:
    """A file's format number is one of `known` (a crafted file may hold a tensor or a string there)."""
    return type(value) is int and value in known


def _as_shown(value: Any) -> str:
    """A value read from a file, for an error line: plain values as they are, anything else by its type."""
    return repr(value) if type(value) in (int, float, str, bool) and len(repr(value)) < 80 else type(value).__name__


def _load(path: Path, fix: str, device: torch.device | str = "cpu") -> Any:
    try:
        with warnings.catch_warnings():  # torch's own warnings about a foreign file: the error line says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except OSError as err:  # the file may be sound: what stops the read is the system's (permissions, a disk)
        raise UsageError(
            f"cannot read {path} ({err.strerror or type(err).__name__}); make it readable and rerun"
        ) from None
    except Exception as err:  # truncated, foreign, or holding objects we do not load
        raise UsageError(f"{path} is not a readable checkpoint ({type(err).__name__}); {fix}") from None


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    config = targets.current_names(OmegaConf.to_container(OmegaConf.create(config), resolve=True))
    augment = config.get("augment") if isinstance(config.get("augment"), dict) else {}
    if augment.get("_target_") == DEVICE_ENGINE and augment.get("engine") != "albumentations":
        config.get("data", {}).pop("num_workers", None)
    # saved before data options stated their images' shape: CIFAR's, the only one then (a run resumes across it)
    for section, key, value in (("data", "channels", 3), ("data", "image_size", 32), ("model", "in_channels", 3)):
        if isinstance(config.get(section), dict):
            config[section].setdefault(key, value)
    for dotted in FREE_TO_CHANGE:
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return config


def _differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}={a!r} there, {b!r} now")
    return found
