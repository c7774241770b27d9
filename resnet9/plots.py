"""Figures drawn from metrics.json's content (never from the trainer's state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402


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
