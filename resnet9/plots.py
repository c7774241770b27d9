"""Figures drawn from recorded results — metrics.json, lr_finder.json — never from the trainer's state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def lr_range_test(found: dict[str, Any], skip_start: int, skip_end: int, title: str, path: Path) -> Path:
    """The range test's smoothed loss against LR (log scale, trimmed as the rule reads it), with its picks."""
    history = found["history"]
    end = len(history["lr"]) - skip_end
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot(history["lr"][skip_start:end], history["loss"][skip_start:end], color="tab:blue")
    ax.set_xscale("log")
    ax.axvline(found["lr_min"], color="tab:green", linestyle="--", label=f"LRMIN = {found['lr_min']:.3g}")
    ax.axvline(found["lr_max"], color="tab:red", linestyle="--", label=f"LRMAX = {found['lr_max']:.3g}")
    ax.axvline(
        found["steepest_lr"], color="tab:olive", linestyle=":", label=f"steepest fall at {found['steepest_lr']:.3g}"
    )
    ax.axvline(found["min_loss_lr"], color="grey", linestyle=":", label=f"lowest loss at {found['min_loss_lr']:.3g}")
    ax.set(title=title, xlabel="learning rate (log scale)", ylabel="training loss (smoothed)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def training_curves(metrics: dict[str, Any], path: Path) -> Path:
    """Loss, accuracy (train and test, per epoch) and the LR of every step, side by side."""
    epochs = [row["epoch"] for row in metrics["epochs"]]
    column = {key: [row[key] for row in metrics["epochs"]] for key in metrics["epochs"][0]}
    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(15, 4.2))

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
    lr_ax.axhline(metrics["lr_min"], color="tab:green", linestyle="--", label=f"LRMIN {metrics['lr_min']:.3g}")
    lr_ax.set(title="Learning rate (One Cycle, per step)", xlabel="epoch", ylabel="learning rate")

    for ax in (loss_ax, acc_ax, lr_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix(matrix: np.ndarray, classes: tuple[str, ...], path: Path, title: str) -> Path:
    """Counts of (true class, predicted class), with each row's share as the colour (rows sum to 100%)."""
    share = matrix / matrix.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_gallery(images: np.ndarray, captions: list[str], path: Path, title: str, columns: int = 6) -> Path:
    """uint8 HWC images in a grid, each with its caption (e.g. true vs predicted class and confidence)."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # keep the first row's captions clear of the title
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_accuracy(groups: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    """Test accuracy per epoch of every job (metrics.json contents, grouped by setting); one colour per setting."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.get_cmap("tab10")
    for index, (setting, runs) in enumerate(groups.items()):
        for n, job in enumerate(r for r in runs if r.get("epochs")):
            epochs = [row["epoch"] for row in job["epochs"]]
            accuracy = [100 * row["test_acc"] for row in job["epochs"]]
            label = setting if n == 0 else None
            ax.plot(epochs, accuracy, "o-", color=colours(index % 10), alpha=0.8, markersize=3, label=label)
    ax.set(title=title, xlabel="epoch", ylabel="test accuracy (%)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="setting (seeds share a colour)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
