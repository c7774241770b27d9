"""Callbacks: a user's own hooks into a run, named in the `callbacks` config group (no change to the trainer).

A callback is any object with some of the hooks below, built from a `_target_` in `conf/callbacks/<option>.yaml`
(or a folder of your own: `--config-dir myconf callbacks=mine`). The trainer tells every callback, in the order
given, before it records anything, so what a callback adds to an epoch's `row` lands in metrics.json, W&B and
the console (a line after the epoch's):

    on_run_start(state)                 state: resnet9.training.state.TrainState (model, optimizer, scheduler, record)
    on_epoch_end(state, row, result)    row: the epoch's numbers (a dict: add your own keys)
    on_stop(state)                      a SIGTERM/SIGINT stop, before last.pt is written
    on_run_end(state, status)           status: completed, interrupted or failed

Under torchrun only rank 0 runs callbacks (it alone evaluates and records).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from resnet9.core.errors import ConfigError
from resnet9.training import build
from resnet9.training.listeners import Listener as Callback
from resnet9.training.loop import EpochResult
from resnet9.training.state import TrainState

__all__ = ["Callback", "WeightNorm"]
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

    def _call(self, hook: str, *args: object) -> None:
        method = getattr(self.callback, hook, None)
        if method is not None:
            method(*args)


def hooks_of(callback: object) -> list[str]:
    """The hooks an object has (callable attributes of those names)."""
    return [hook for hook in HOOKS if callable(getattr(callback, hook, None))]


class WeightNorm(Callback):
    """Adds `weight_norm`, the L2 norm of all the model's parameters, to each epoch's row."""

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], result: EpochResult) -> None:
        with torch.no_grad():
            norms = torch.stack([p.detach().float().norm() for p in state.model.parameters()])
            row["weight_norm"] = float(torch.linalg.vector_norm(norms))


def from_config(cfg: DictConfig) -> list[Callback]:
    """The `callbacks` group's objects, in the order the config names them (resnet9/training/callbacks.py); one
    with only some of the hooks is wrapped so that the others do nothing, and one with none is refused."""
    made = []
    for name, node in (cfg.get("callbacks") or {}).items():
        callback = build.built(node)
        hooks = hooks_of(callback)
        strangers = [attr for attr in dir(callback) if attr.startswith("on_") and attr not in HOOKS]
        if not hooks or strangers:  # a misspelt hook would never be called, without a word
            found = f"has {', '.join(strangers)}, not a hook" if strangers else "has none of the hooks"
            raise ConfigError(
                f"callbacks.{name} ({node.get('_target_')}) {found}; the hooks are {', '.join(HOOKS)} "
                f"(resnet9/training/callbacks.py says what each receives)"
            )
        made.append(callback if len(hooks) == len(HOOKS) else SomeHooks(callback))
    return made
