"""Figures drawn from recorded results — metrics.json, lr_finder.json — never from the trainer's state.

Each figure is a matplotlib `Figure` of its own (no pyplot, no global state), so figures can be drawn on a
background thread while the next job of a sweep sets up and trains: `in_background(draw, ...)`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from resnet9.core import files

log = logging.getLogger(__name__)


def _lower_priority() -> None:
    """Figures yield the CPU to training: on a small CPU they are drawn in the gaps between its steps."""
    with contextlib.suppress(AttributeError, OSError):  # per-thread priority: Linux only
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


_drawer = ThreadPoolExecutor(1, "figures", initializer=_lower_priority)  # joined when the process exits
_pending: list[tuple[Path | None, Future]] = []  # (the file a figure writes, its drawing)


def in_background(draw: Callable[..., Path], *args: Any, **kwargs: Any) -> Future:
    """Draw a figure on the figure thread; a failure is logged as a warning (a figure never fails a run).
    Every drawing function here writes the file named by its `path` argument (`wait_for_figures` waits by it)."""

    def drawn() -> Path | None:
        try:
            return draw(*args, **kwargs)
        except Exception as err:
            log.warning("could not draw %s: %s: %s", draw.__name__, type(err).__name__, err)
            return None

    try:
        target = inspect.signature(draw).bind(*args, **kwargs).arguments.get("path")
    except TypeError:  # arguments the drawing does not take: drawn() logs its failure; nothing to wait by
        target = None
    future = _drawer.submit(drawn)
    _pending[:] = [entry for entry in _pending if not entry[1].done()]  # a long sweep keeps no finished ones
    _pending.append((None if target is None else Path(target), future))
    return future


def wait_for_figures(*paths: Path) -> None:
    """Block until the figures that write `paths` are on disk; with no paths, every figure asked for so far.
    Waiting for one figure only keeps the others (a job's curves.png) off the critical path."""
    wanted = {Path(path) for path in paths}
    for entry in list(_pending):
        target, future = entry
        if not wanted or target in wanted:
            future.result()
            with contextlib.suppress(ValueError):  # another thread may have taken it off already
                _pending.remove(entry)


def lr_range_test(lrs: np.ndarray, losses: np.ndarray, found: dict[str, Any], title: str, path: Path) -> Path:
    """The range test's smoothed loss against LR (log scale; the curve as the rules read it, trimmed), LRMIN
    and LRMAX (`found`, with the rule), and where each of the other rules (lr_finder.rule) would have put LRMAX."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    ax.plot(lrs, losses, color="tab:blue")
    ax.set_xscale("log")
    ax.axvline(found["lr_min"], color="tab:green", linestyle="--", label=f"LRMIN = {found['lr_min']:.3g}")
    ax.axvline(found["lr_max"], color="tab:red", linestyle="--",
               label=f"LRMAX = {found['lr_max']:.3g} (rule {found['rule']})")  # fmt: skip
    # The other rules' picks as markers on the curve: a sweep over lr_finder.rule reads this same curve.
    markers = iter("vDs^PX")
    for rule, lr in found["picks"].items():
        at = int(np.argmin(np.abs(np.log(lrs) - np.log(lr))))
        ax.plot(lr, losses[at], next(markers, "o"), markersize=7, zorder=3, alpha=0.8, label=f"{rule}: {lr:.3g}")
    ax.set(title=title, xlabel="learning rate (log scale)", ylabel="training loss (smoothed)")
    ax.legend(fontsize="small", loc="lower left")  # the curve starts high on the left: that corner is free
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    files.save_figure(fig, path, dpi=120)
    return path


def training_curves(metrics: dict[str, Any], path: Path) -> Path:
    """Loss, accuracy (train and test, per epoch) and the LR of every step, side by side."""
    epochs = [row["epoch"] for row in metrics["epochs"]]
    column = {key: [row[key] for row in metrics["epochs"]] for key in metrics["epochs"][0]}
    fig = Figure(figsize=(15, 4.2))
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)

    loss_ax.plot(epochs, column["train_loss"], "o-", label="train")
    loss_ax.plot(epochs, column["test_loss"], "s-", label="test")
    loss_ax.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss")

    acc_ax.plot(epochs, [100 * a for a in column["train_acc"]], "o-", label="train (augmented)")
    acc_ax.plot(epochs, [100 * a for a in column["test_acc"]], "s-", label="test")
    best = max(column["test_acc"])
    acc_ax.axhline(100 * best, color="grey", linestyle=":", label=f"best test {100 * best:.2f}%")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")

    lrs = metrics["lr_per_step"]
    steps_per_epoch = len(lrs) / len(epochs)
    lr_ax.plot([(i + 1) / steps_per_epoch for i in range(len(lrs))], lrs, color="tab:purple")
    lr_ax.axhline(metrics["lr_max"], color="tab:red", linestyle="--", label=f"LRMAX {metrics['lr_max']:.3g}")
    if metrics.get("lr_min") is not None:  # (a torch schedule may have no LRMIN)
        lr_ax.axhline(metrics["lr_min"], color="tab:green", linestyle="--", label=f"LRMIN {metrics['lr_min']:.3g}")
    lr_ax.set(title="Learning rate (per step)", xlabel="epoch", ylabel="learning rate")

    losses = [loss for loss in column["train_loss"] + column["test_loss"] if loss > 0]
    if losses and max(losses) > 10 * min(losses):  # one exploding epoch would flatten the others on a linear axis
        loss_ax.set_yscale("log")
        loss_ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))  # plain numbers, no mathtext
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
    for ax in (loss_ax, acc_ax):
        ax.set_xlim(0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    # Fixed margins, not tight_layout: that lays the figure out by drawing it twice (0.3 of 0.5 s per job).
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.12, top=0.92, wspace=0.22)
    files.save_figure(fig, path, dpi=110)
    return path


def confusion_matrix(matrix: np.ndarray, classes: tuple[str, ...], path: Path, title: str) -> Path:
    """Counts of (true class, predicted class), with each row's share as the colour (rows sum to 100%)."""
    share = matrix / matrix.sum(1, keepdims=True).clip(min=1)
    fig = Figure(figsize=(8.5, 7.5))
    ax = fig.subplots()
    image = ax.imshow(100 * share, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="share of the true class (%)")
    for true in range(len(classes)):
        for pred in range(len(classes)):
            dark = share[true, pred] > 0.5
            ax.text(
                pred,
                true,
                str(matrix[true, pred]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.tight_layout()
    files.save_figure(fig, path, dpi=110)
    return path


def image_gallery(images: np.ndarray, captions: list[str], path: Path, title: str, columns: int = 6) -> Path:
    """uint8 HWC images (RGB, or one grey channel) in a grid, each with its caption (e.g. true vs predicted class
    and confidence)."""
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(2.1 * columns, 2.4 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        if image.shape[-1] == 1:  # imshow takes grey as (H, W) only, and would colour it without a grey map
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # keep the first row's captions clear of the title
    files.save_figure(fig, path, dpi=110)
    return path


def sweep_accuracy(groups: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    """Test accuracy per epoch of every job (thin lines), and per setting the mean over its jobs with a ± std
    band where it has several; one colour per setting, whole-number epoch ticks."""
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"]
    for index, (setting, runs) in enumerate(groups.items()):
        colour, curves = colours(index % 10), {}
        for job in runs:
            for row in job.get("epochs", []):
                curves.setdefault(row["epoch"], []).append(100 * row["test_acc"])
            epochs = [row["epoch"] for row in job.get("epochs", [])]
            ax.plot(epochs, [100 * row["test_acc"] for row in job.get("epochs", [])], color=colour, alpha=0.3, lw=1)
        if curves:
            epochs = sorted(curves)
            mean = np.array([np.mean(curves[e]) for e in epochs])
            std = np.array([np.std(curves[e], ddof=1) if len(curves[e]) > 1 else 0.0 for e in epochs])
            ax.plot(epochs, mean, "o-", color=colour, markersize=3, label=f"{setting} (n={len(runs)})")
            ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
    ax.set(title=title, xlabel="epoch", ylabel="test accuracy (%)")
    last_epoch = max(
        (row["epoch"] for runs in groups.values() for job in runs for row in job.get("epochs", [])), default=1
    )
    ax.set_xlim(0.5, last_epoch + 0.5)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="setting: mean ± std over its jobs", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.93)
    files.save_figure(fig, path, dpi=110)
    return path
