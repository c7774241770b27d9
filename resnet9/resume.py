"""Checkpoint and resume: what a run needs to continue exactly where its last complete epoch ended.

Every epoch the trainer writes last.pt atomically (temp file, then rename: a half-written file is never
loaded). Besides the weights it evaluated, the checkpoint holds `train_state`: the raw weights, optimizer,
scheduler, EMA, every random state (torch, CUDA, NumPy, Python, and the loader's generator, which draws the
shuffling and the augmentation), the metrics so far and the W&B run id.

`resume=auto` (default): a run whose output folder already holds such a checkpoint continues from it —
rerun the same job folder (`hydra.run.dir=...`) after a crash, a kill or a pre-emption. A checkpoint of a
different configuration there is refused with one line. `resume=false` starts over in place.

With the device-resident engine on a deterministic device the resumed run ends with exactly the metrics of
an uninterrupted one (tested with kill -9 in the middle of an epoch). The albumentations engine restores
its loader's generator (so worker seeds match) but not the main-process pipeline's own state, so with
`data.num_workers=0` its augmentations differ after a resume.

SIGTERM and SIGINT set a flag that the loop checks after every step: the run stops there, marks
metrics.json "interrupted" and exits with 128 + the signal number. With the device engine in a single process
it first saves last.pt at that step: besides the usual state, `partial_epoch` holds the loader's generator as
the epoch began and the epoch's running sums, so the resumed run replays the loader to that step and carries
on exactly (tested). Otherwise (albumentations engine, torchrun) last.pt stays at the last complete epoch.
"""

from __future__ import annotations

import contextlib
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from resnet9.config import UsageError
from resnet9.loop import StopFlag

# Settings that may differ between a run and its resumption: they change no result.
FREE_TO_CHANGE = ("resume", "progress", "log_every", "device", "logger", "data.num_workers", "data.root")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    config = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    for dotted in FREE_TO_CHANGE:
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return config


def _differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(saved) | set(current))
    found = []
    for key in keys:
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}={a!r} there, {b!r} now")
    return found


def load_resumable(path: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The checkpoint to continue from, or None to start fresh. Refuses one of another configuration."""
    if cfg.resume is False or not path.is_file():
        return None
    fix = f"rerun with the same overrides, use a new output folder, or resume=false to start over in {path.parent}"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign: atomic writes make this someone else's file
        raise UsageError(f"cannot resume from {path} ({type(err).__name__}); {fix}") from None
    if not isinstance(checkpoint, dict) or "train_state" not in checkpoint or "config" not in checkpoint:
        raise UsageError(f"cannot resume from {path}: it is not a resnet9 training checkpoint; {fix}")
    differences = _differences(_comparable(checkpoint["config"]), _comparable(OmegaConf.to_container(cfg)))
    if differences:
        raise UsageError(f"cannot resume from {path}: its run had {'; '.join(differences[:3])}; {fix}")
    return checkpoint


def capture_rng(loader_generator: torch.Generator) -> dict[str, Any]:
    """Every random state, as tensors and plain lists (loadable with torch.load(weights_only=True))."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "loader": loader_generator.get_state(),
    }


def restore_rng(state: dict[str, Any], loader_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    loader_generator.set_state(state["loader"])


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """SIGTERM/SIGINT set the flag instead of killing the process; the previous handlers come back after."""
    flag = StopFlag()

    def request_stop(signum: int, _frame: Any) -> None:
        flag.signal = signum

    try:
        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread (e.g. some launchers): no handlers, the flag never rises
        yield flag
        return
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
