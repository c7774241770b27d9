"""Callbacks: a user's own hooks into a run, named in the `callbacks` config group (no change to the trainer).

A callback is any object with some of the hooks below, built from a `_target_` in `conf/callbacks/<option>.yaml`
(or a folder of your own: `--config-dir myconf callbacks=mine`). The trainer tells every callback, in the order
given, before it records anything, so what a callback adds to an epoch's `row` lands in metrics.json, W&B and
the console (a line after the epoch's):

    on_run_start(state)                 state: engine/state.py's TrainState (model, optimizer, scheduler, record)
    on_epoch_end(state, row, result)    row: the epoch's numbers (a dict: add your own keys)
    on_stop(state)                      a SIGTERM/SIGINT stop, before last.pt is written
    on_run_end(state, status)           status: completed, interrupted or failed

A callback may steer: `state.stop_after_epoch(reason)` in `on_epoch_end` ends the run after that epoch, recorded
as completed and stopped early at that epoch, with the reason (metrics.json `stopped_early`, W&B, the console).
A callback with `state_dict()` / `load_state_dict(state)` has its state saved in last.pt and given back on a
resume, so a resumed run decides as the uninterrupted one would. Two built-ins use both: `EarlyStopping` and
`BestCheckpoint` (best.pt beside last.pt; evaluate and predict take either).

Under torchrun only rank 0 runs callbacks (it alone evaluates and records); a stop reaches every rank.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from resnet9.core import files
from resnet9.core.errors import ConfigError
from resnet9.training.engine import build
from resnet9.training.engine.lifecycle import Listener as Callback
from resnet9.training.engine.loop import EpochResult
from resnet9.training.engine.schedule import monitored
from resnet9.training.engine.state import TrainState

__all__ = ["BestCheckpoint", "Callback", "EarlyStopping", "WeightNorm"]
HOOKS = tuple(name for name in vars(Callback) if name.startswith("on_"))  # the trainer's hooks, as Listener has them


class SomeHooks(Callback):
    """A callback of the user's that has only some of the hooks (no need to derive from Callback): the trainer
    calls every hook, so the ones it lacks do nothing here."""

    def __init__(self, callback: object) -> None:
        self.callback = callback

    def on_run_start(self, state: TrainState) -> None:
        self._call("on_run_start", state)

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], result: EpochResult) -> None:
        self._call("on_epoch_end", state, row, result)

    def on_stop(self, state: TrainState) -> None:
        self._call("on_stop", state)

    def on_run_end(self, state: TrainState, status: str) -> None:
        self._call("on_run_end", state, status)

    def _call(self, hook: str, *args: object) -> Any:
        method = getattr(self.callback, hook, None)
        return method(*args) if method is not None else None

    def state_dict(self) -> Any:
        return self._call("state_dict")

    def load_state_dict(self, state: Any) -> None:
        self._call("load_state_dict", state)


def hooks_of(callback: object) -> list[str]:
    """The hooks an object has (callable attributes of those names)."""
    return [hook for hook in HOOKS if callable(getattr(callback, hook, None))]


class WeightNorm(Callback):
    """Adds `weight_norm`, the L2 norm of all the model's parameters, to each epoch's row."""

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], result: EpochResult) -> None:
        with torch.no_grad():
            norms = torch.stack([p.detach().float().norm() for p in state.model.parameters()])
            row["weight_norm"] = float(torch.linalg.vector_norm(norms))


class Monitored:
    """The best value so far of one number of the epoch's row (`monitor`), and how many epochs since it improved
    by more than `min_delta` (`mode`: min for a loss, max for an accuracy)."""

    def __init__(self, monitor: str, mode: Literal["min", "max"], min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"callbacks: mode={mode!r} must be min or max; e.g. mode=max for test_acc")
        self.monitor, self.sign, self.min_delta = monitor, (1 if mode == "min" else -1), min_delta
        self.best, self.best_epoch, self.since_best = math.inf, 0, 0

    def improved(self, row: dict[str, Any]) -> bool:
        value = monitored(row, self.monitor, "callbacks: monitor")
        if self.sign * value < self.best - self.min_delta:
            self.best, self.best_epoch, self.since_best = self.sign * value, row["epoch"], 0
            return True
        self.since_best += 1
        return False

    def shown_best(self) -> str:
        return f"best {self.monitor} {self.sign * self.best:.4g} at epoch {self.best_epoch}"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "since_best": self.since_best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.since_best = state["best"], state["best_epoch"], state["since_best"]


class EarlyStopping(Callback, Monitored):
    """Ends the run when `monitor` has not improved by more than `min_delta` for `patience` epochs in a row."""

    def __init__(self, monitor: str = "test_loss", mode: Literal["min", "max"] = "min", patience: int = 3,
                 min_delta: float = 0.0) -> None:  # fmt: skip
        Monitored.__init__(self, monitor, mode, min_delta)
        self.patience = patience

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], result: EpochResult) -> None:
        if not self.improved(row) and self.since_best >= self.patience:
            state.stop_after_epoch(
                f"{self.monitor} did not improve by more than {self.min_delta:g} for {self.patience} epochs "
                f"({self.shown_best()})"
            )


class BestCheckpoint(Callback, Monitored):
    """best.pt beside last.pt: the checkpoint of the epoch with the best `monitor` so far (evaluate and predict
    take it as they take last.pt). `dirpath`: where, by default the run's output folder."""

    def __init__(self, monitor: str = "test_acc", mode: Literal["min", "max"] = "max", filename: str = "best.pt",
                 dirpath: str | None = None) -> None:  # fmt: skip
        Monitored.__init__(self, monitor, mode)
        self.filename, self.dirpath = filename, dirpath

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], result: EpochResult) -> None:
        if self.improved(row):
            folder = Path(self.dirpath or (HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else "."))
            files.save_torch(folder / self.filename, state.checkpoint(state.record["config"]))
            row[f"best_{self.monitor}"] = self.sign * self.best


def from_config(cfg: DictConfig) -> dict[str, Callback]:
    """The `callbacks` group's objects by name, in the order the config names them (this module's docstring
    says what a callback is); one with only some of the hooks is wrapped so that the others do nothing, and one
    with none is refused."""
    made = {}
    for name, node in (cfg.get("callbacks") or {}).items():
        callback = build.built(node, f"callbacks.{name}")
        hooks = hooks_of(callback)
        strangers = [attr for attr in dir(callback) if attr.startswith("on_") and attr not in HOOKS]
        if not hooks or strangers:  # a misspelt hook would never be called, without a word
            found = f"has {', '.join(strangers)}, not a hook" if strangers else "has none of the hooks"
            raise ConfigError(
                f"callbacks.{name} ({node.get('_target_')}) {found}; the hooks are {', '.join(HOOKS)} "
                f"(resnet9/training/recording/callbacks.py says what each receives)"
            )
        made[name] = callback if len(hooks) == len(HOOKS) else SomeHooks(callback)
    return made
