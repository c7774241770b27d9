"""The recorders: listeners the trainer notifies, each owning one record of the run.

    CheckpointWriter  last.pt after every epoch (and at the step where a stop came, where that can resume)
    SummaryAndCurves  model_summary.txt, and curves.png at the end (drawn on the figure thread)
    TrackerLog        the experiment tracker (W&B): every step's loss and LR, epoch rows, figures, summary
    ConsoleLog        the lines a user reads in the terminal and in train.log
    MetricsFile       metrics.json: every epoch, and last of all with the final status and the timings

When each hook is called, and how a run's end becomes its status: training/engine/lifecycle.py (with
`SignalStop`, the stop signals' listener, which the engine owns).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnet9.analysis import model_table, plots
from resnet9.core import files, jobcache
from resnet9.core.errors import UsageError
from resnet9.data.datasets import NUM_CLASSES
from resnet9.training.engine.epoch import TRAINERS_KEYS
from resnet9.training.engine.lifecycle import Listener
from resnet9.training.engine.loop import EpochResult
from resnet9.training.engine.state import TrainState
from resnet9.training.lr import derive

log = logging.getLogger(__name__)
LONG_ON_A_CPU = 200_000  # images to train on (all epochs) above which a CPU run is worth a word
EXPLODED = 3  # a test loss above 3 x ln 10 (3 x a uniform guess's loss) counts as exploded


class CheckpointWriter(Listener):
    """last.pt, atomically, after every epoch; after a stop, at the step it came (`mid_epoch`), unless training
    had diverged by then.

    The epoch's checkpoint is copied off the device and written by `writer`'s thread while the next epoch
    trains (with a GPU the write would otherwise stall it); the next epoch's end waits for it (and raises if it
    failed). The last epoch's and a stop's are written at once: nothing is left to overlap with.
    `mid_epoch=False` under torchrun: a rank's running sums cover only its own slice, and the others may
    already be gone, so the checkpoint stays at the last complete epoch and the partial epoch is redone.
    """

    def __init__(self, path: Path, config: dict[str, Any], writer: files.BackgroundWriter, mid_epoch: bool = True):
        self.path, self.config, self.writer, self.mid_epoch = path, config, writer, mid_epoch

    def on_run_start(self, state: TrainState) -> None:
        if "resumed_from_epoch" not in state.record.data and self.path.is_file():
            # resume=false: the folder's last.pt is the earlier run's; left beside this run's metrics.json, a
            # plain rerun would resume that run should this one end before its first checkpoint
            self.path.unlink()
            log.info("resume=false: removed the earlier run's %s; this run starts over", self.path.name)

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], result: EpochResult) -> None:
        self.writer.wait()  # the previous epoch's, written during this one
        if row["epoch"] == state.record["config"]["epochs"]:
            files.save_torch(self.path, state.checkpoint(self.config))
        else:
            self.writer.submit(files.save_torch, self.path, files.host_copy(state.checkpoint(self.config)))

    def on_stop(self, state: TrainState) -> None:
        try:
            self.writer.wait()
        except UsageError as err:  # an earlier epoch's write failed: say so, and still try the stop's own save
            state.record.update(error=str(err))
        if not (self.mid_epoch and state.epoch_sums is not None):
            return
        if state.is_finite():
            files.save_torch(self.path, state.checkpoint(self.config))
        else:  # a resume would start from NaN weights: keep the last good epoch's checkpoint instead
            kept = f"{self.path} keeps epoch {state.epoch}" if self.path.is_file() else "no checkpoint is written"
            log.warning("training had diverged (NaN or inf) before the stop: %s", kept)

    def on_run_end(self, state: TrainState, status: str) -> None:
        self.writer.wait()


class SummaryAndCurves(Listener):
    """model_summary.txt at the start; curves.png once the run completes, drawn on the figure thread so that
    the next job of a sweep does not wait for it."""

    def __init__(self, out_dir: Path, model_cfg: dict[str, Any]) -> None:
        self.out_dir, self.model_cfg = out_dir, model_cfg

    def on_run_start(self, state: TrainState) -> None:
        height, width, channels = state.record.get("image_shape", (32, 32, 3))  # (a record made without data: CIFAR's)
        shape = (channels, height, width)
        text = jobcache.shared.get(
            "summary", [self.model_cfg, list(shape)], lambda: model_table.describe(state.model, shape)
        )
        files.write_text(self.out_dir / "model_summary.txt", text + "\n")

    def on_run_end(self, state: TrainState, status: str) -> None:
        if status == "completed":
            plots.in_background(plots.training_curves, state.record.document(), self.out_dir / "curves.png")


class MetricsFile(Listener):
    """metrics.json: written at the start (running), after every epoch, and last of all with the final status
    (completed, failed or interrupted) and the job's timings. After the checkpoint (on the same background
    writer): while the run goes well, an epoch it lists is always one a resume starts after; the final record of a
    run whose checkpoint write failed lists every epoch trained, and its error says which write failed."""

    def __init__(self, out_dir: Path, writer: files.BackgroundWriter) -> None:
        self.path, self.writer = out_dir / "metrics.json", writer

    def on_run_start(self, state: TrainState) -> None:
        files.write_json(self.path, state.record.document())

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], result: EpochResult) -> None:
        self.writer.submit(files.write_json, self.path, files.host_copy(state.record.document()))  # after last.pt

    def on_run_end(self, state: TrainState, status: str) -> None:
        with contextlib.suppress(UsageError):  # a failed write in flight: already the run's error
            self.writer.wait()
        self.writer.close()
        files.write_json(self.path, state.record.document())


class TrackerLog(Listener):
    """The experiment tracker: started with the run (a resumed run continues its own W&B run) with the derived
    LRs in its config and the range test's curve as a table; every step's loss and LR and the epoch's row
    after each epoch; the range-test figure, summary numbers and (if asked) the checkpoint at the end."""

    SUMMARY = ("final_test_acc", "best_test_acc", "best_epoch", "train_time_s", "lr_min", "lr_max", "parameters")

    def __init__(
        self, start_tracker: Callable[[str | None, dict], Any], out_dir: Path, curve: dict[str, list] | None = None
    ) -> None:
        self.start_tracker, self.out_dir, self.tracker, self.curve = start_tracker, out_dir, None, curve

    def on_run_start(self, state: TrainState) -> None:
        derived = {key: state.record[key] for key in ("lr_min", "lr_max", "lr_source")}
        self.tracker = self.start_tracker(state.record.get("tracker_run_id"), derived)
        state.record.update(tracker_run_id=getattr(self.tracker, "run_id", None))
        if self.curve is not None:  # the range test this run read (a resumed run logged its own already)
            rows = [{"lr": lr, "loss": loss} for lr, loss in zip(self.curve["lr"], self.curve["loss"], strict=True)]
            self.tracker.log_table("lr_finder/curve", rows, step=0)

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], result: EpochResult) -> None:
        first_step = (row["epoch"] - 1) * state.record["steps_per_epoch"]
        for i, (lr, step_loss) in enumerate(zip(result.lrs, result.step_losses, strict=True)):
            self.tracker.log({"train/lr": lr, "train/loss": step_loss}, step=first_step + i)
        self.tracker.log({f"epoch/{key}": value for key, value in row.items()}, step=first_step + len(result.lrs) - 1)

    def on_run_end(self, state: TrainState, status: str) -> None:
        if self.tracker is None:
            return
        if status == "completed":
            plots.wait_for_figures(self.out_dir / derive.PLOT_NAME)  # drawn on the figure thread
            if (self.out_dir / derive.PLOT_NAME).is_file():
                self.tracker.log_images(
                    {"lr_finder": self.out_dir / derive.PLOT_NAME}, len(state.record["lr_per_step"]) - 1
                )
            self.tracker.summary({key: state.record[key] for key in self.SUMMARY})
            if state.record.get("stopped_early"):  # a callback ended it: at which epoch, and why
                early = state.record["stopped_early"]
                self.tracker.summary({"stopped_early_epoch": early["epoch"], "stopped_early": early["reason"]})
            if (self.out_dir / "last.pt").is_file():
                self.tracker.log_checkpoint_file(self.out_dir / "last.pt")
        if status == "pruned":  # W&B shows it finished, with its state and the epoch it was stopped after
            self.tracker.summary({"status": "pruned", "pruned_at_epoch": state.record.get("pruned_at_epoch")})
        ended = status in ("completed", "pruned")
        self.tracker.finish(exit_code=0 if ended else 1, preempted=status in ("interrupted", "requeued"))


def _briefly(value: object) -> str:
    """A number to 4 significant digits, anything else as it prints."""
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


class ConsoleLog(Listener):
    """The run's story in the terminal (and train.log): what it trains with, one line per epoch, the result."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir, self.epochs_timed = out_dir, 0

    def on_run_start(self, state: TrainState) -> None:
        r = state.record
        log.info(
            "%d train / %d test images on %s (%s); %s parameters; LRMIN=%s LRMAX=%.4g (%s)",
            r["n_train"],
            r["n_test"],
            r["device"],
            r["precision"],
            f"{r['parameters']:,}",
            "none" if r["lr_min"] is None else f"{r['lr_min']:.4g}",
            r["lr_max"],
            r["lr_source"],
        )
        if "resumed_from_epoch" in r.data:
            steps = f" and {len(state.epoch_sums.lrs)} steps of the next" if state.epoch_sums is not None else ""
            log.info("resuming from %s after epoch %d%s", self.out_dir / "last.pt", state.epoch, steps)
        if r["device"] == "cpu" and r["n_train"] * r["config"]["epochs"] >= LONG_ON_A_CPU:
            log.info("a long run for a CPU (hours at full width); for a first result in about a minute: "
                     "experiment=quick_cpu")  # fmt: skip

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], result: EpochResult) -> None:
        log.info(
            "epoch %2d/%d  train loss %.4f acc %.2f%%  test loss %.4f acc %.2f%%  lr %.4g  %.1fs  %.0f img/s%s",
            row["epoch"],
            state.record["config"]["epochs"],
            row["train_loss"],
            100 * row["train_acc"],
            row["test_loss"],
            100 * row["test_acc"],
            row["lr"],
            row["epoch_time_s"],
            row["images_per_s"],
            f"  MFU {100 * row['mfu']:.1f}%" if "mfu" in row else "",
        )
        if own := [f"{key} {_briefly(value)}" for key, value in row.items() if key not in TRAINERS_KEYS]:
            log.info("epoch %2d callbacks: %s", row["epoch"], "  ".join(own))  # what a callback added to the row
        self.epochs_timed += 1
        remaining = state.record["config"]["epochs"] - row["epoch"]
        if self.epochs_timed == 1 and remaining > 0:  # the first epoch this process ran: how long the rest takes
            seconds = remaining * row["epoch_time_s"]
            log.info("at this pace the %d epochs to go take about %.0f s more", remaining, seconds)

    def on_run_end(self, state: TrainState, status: str) -> None:
        if status != "completed":
            return
        r = state.record
        self._warn_if_exploded(r)
        if r.get("stopped_early"):
            log.info("stopped early after epoch %d: %s", r["stopped_early"]["epoch"], r["stopped_early"]["reason"])
        log.info(
            "final test accuracy %.2f%% (best %.2f%% at epoch %d); training time %.1fs; results in %s",
            100 * r["final_test_acc"],
            100 * r["best_test_acc"],
            r["best_epoch"],
            r["train_time_s"],
            self.out_dir,
        )

    @staticmethod
    def _warn_if_exploded(record: Any) -> None:
        """A run can complete with a test loss that blew up and never recovered (a peak LR too high for a small
        network): say so. A spike around the peak that training recovers from (a short run at a high LR often
        has one) is not worth a word."""
        losses = [row["test_loss"] for row in record["epochs"]]
        epoch, worst = max(enumerate(losses, start=1), key=lambda item: math.inf if math.isnan(item[1]) else item[1])
        recovered = record["final_test_acc"] > 2 / NUM_CLASSES  # ends above twice chance
        if not worst <= EXPLODED * math.log(10) and not recovered:  # (nan included)
            log.warning(
                "the test loss exploded to %.4g at epoch %d (a uniform guess scores %.2f): LRMAX=%.4g may be too "
                "high for this setup; try lr_finder.scale=0.5 or lr_finder.max_divisor=2, or give optimizer.lr",
                worst, epoch, math.log(10), record["lr_max"],
            )  # fmt: skip
