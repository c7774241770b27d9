"""What happens around the epochs: listeners the trainer notifies, each owning one concern.

    SignalStop        SIGTERM/SIGINT/SIGUSR2 raise a flag that the loop checks after every step
    CheckpointWriter  last.pt after every epoch (and at the step where a stop came, where that can resume)
    SummaryAndCurves          model_summary.txt, and curves.png at the end (drawn on the figure thread)
    TrackerLog        the experiment tracker (W&B): every step's loss and LR, epoch rows, figures, summary
    ConsoleLog        the lines a user reads in the terminal and in train.log
    MetricsFile       metrics.json: every epoch, and last of all with the final status and the timings

The trainer calls, in list order: `on_run_start` before the first epoch, `on_epoch_end` after each evaluated
epoch, `on_stop` when a signal stopped training mid-epoch, and `on_run_end` with the final status
(completed, failed, interrupted, requeued -- stopped, and going back to the cluster's queue to resume by itself --,
or pruned by a search) however the run ends. `notifying` wraps the epochs and
turns what happened into that status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from resnet9.analysis import model_table, plots
from resnet9.core import files, jobcache, signals
from resnet9.core.errors import TrialPruned, UsageError, first_line
from resnet9.data.datasets import NUM_CLASSES
from resnet9.training import distributed, lr_finder
from resnet9.training.loop import EpochResult, StopFlag, StopRequested
from resnet9.training.state import TrainState

log = logging.getLogger(__name__)
LONG_ON_A_CPU = 200_000  # images to train on (all epochs) above which a CPU run is worth a word
EXPLODED = 3  # a test loss above 3 x ln 10 (3 x a uniform guess's loss) counts as exploded


class Listener:
    """The hooks, all optional."""

    def on_run_start(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], result: EpochResult) -> None:
        pass

    def on_stop(self, state: TrainState) -> None:
        pass

    def on_run_end(self, state: TrainState, status: str) -> None:
        pass


@contextlib.contextmanager
def notifying(listeners: list[Listener], state: TrainState, stop: StopFlag) -> Iterator[None]:
    """Run the block (the epochs) between `on_run_start` and `on_run_end`, recording how it ended.

    Listeners' time counts as the job's setup (at the start) and as writing (at the end).
    """
    clock, status = state.record.clock, "failed"
    try:
        with clock.phase("setup"):
            for listener in listeners:
                listener.on_run_start(state)
        yield
        status = "completed"
    except TrialPruned as pruned:  # a search's pruner ended it: a result of the search, not a failure
        status = pruned.status
        state.record.update(stopped=str(pruned))
        raise
    except StopRequested as stop_request:
        status = stop_status(stop_request)
        state.record.update(stopped=str(stop_request))
        with clock.phase("write"):
            for listener in listeners:
                listener.on_stop(state)
        raise
    except BaseException as err:
        if stop.signal is not None and distributed.is_active():  # under torchrun a stopped rank can leave
            status = "interrupted"  # another inside a collective: the error it gets there is the stop's doing
            raise StopRequested(stop.signal) from err
        state.record.update(error=one_line(err))
        raise
    finally:
        state.record.update(status=status)
        with clock.phase("write"):
            _tell_run_end(listeners, state, status)


def _tell_run_end(listeners: list[Listener], state: TrainState, status: str) -> None:
    """Every listener hears the end, even when an earlier one fails (a full disk): the first failure is raised
    after all have been told, unless the run had already failed, whose own error then stays the one reported."""
    failures = []
    # SignalStop last: its handlers stay until every other listener has ended (a signal then waits its turn)
    for listener in sorted(listeners, key=lambda listener: isinstance(listener, SignalStop)):
        try:
            listener.on_run_end(state, status)
        except Exception as err:
            failures.append(err)
            log.warning("while ending the run: %s", one_line(err))
    if failures and status == "completed":
        raise failures[0]


@contextlib.contextmanager
def job_record(out_dir: Path, config: Callable[[], dict[str, Any]], overrides: list[str]) -> Iterator[None]:
    """Every job leaves a metrics.json, even one that ends before its run record exists (a bad value, unreadable
    data, a signal during setup): then a short one, with the final status, the error line and the overrides, so
    that a sweep's report counts the job under its setting. A stop signal before training ends the job at
    once (nothing to save yet); from the first epoch on, `SignalStop` takes over."""
    path = out_dir / "metrics.json"
    # a resumed run's record is its own: a failure before it resumes leaves it as it was (not so a setup failure's)
    existed = path.exists() and not _setup_record(path)

    def stop_now(signum: int, _frame: Any) -> None:
        raise StopRequested(signum)

    try:
        with signals.handled(stop_now):
            yield
    except BaseException as err:
        if isinstance(err, StopRequested):  # (a stop in setup is decided here; one in training already was)
            stop_status(err)
        files.put_back_earlier_record(out_dir)  # refused before it trained: .hydra/ describes the earlier run again
        ours_to_write = not path.exists() or _setup_record(path)  # (not if the run's own record began meanwhile)
        if not existed and ours_to_write and not isinstance(err, SystemExit):
            if isinstance(err, StopRequested | KeyboardInterrupt):
                status = stop_status(err) if isinstance(err, StopRequested) else "interrupted"
                record = {"status": status, "stopped": one_line(err)}
            else:
                record = {"status": "failed", "error": one_line(err)}
            record |= {"ended_in": "setup", "overrides": overrides}
            with contextlib.suppress(Exception):  # the record must never hide the error itself
                files.write_json(path, {**record, "config": config(), "epochs": []})
        raise


def stop_status(stop: StopRequested) -> str:
    """How a stopped job is recorded: `requeued` when it goes back to the queue and resumes from last.pt by itself
    (SIGUSR2 with submitit's requeuer behind it, or SIGTERM from SLURM requeuing the job), else `interrupted` (a
    rerun resumes it). Decided once, when the run stops; `stop.requeued` carries it to the command's last line."""
    if stop.requeued is None:
        stop.requeued = signals.requeued_after(stop.signal)
    return "requeued" if stop.requeued else "interrupted"


def not_requeued(out_dir: Path, reason: str | None = None) -> None:
    """A job whose record says `requeued` that nothing will requeue after all (submitit's requeuer declined: the
    job reached its time limit `max_num_timeout` times; or a later stop, during a resumed run's setup, that no
    requeue follows) is `interrupted` again, with the reason, so that the sweep's summary says so."""
    path = out_dir / "metrics.json"
    with contextlib.suppress(OSError, ValueError, AttributeError):  # the record must never hide the stop itself
        record = json.loads(path.read_text())
        if record.get("status") != "requeued":
            return
        stopped = record.get("stopped", "stopped") + (f"; not requeued: {reason}" if reason else "")
        files.write_json(path, {**record, "status": "interrupted", "stopped": stopped})


def _setup_record(path: Path) -> bool:
    """Is this metrics.json the short record of a job that ended before training (job_record's)?"""
    try:
        return json.loads(path.read_text()).get("ended_in") == "setup"
    except (OSError, ValueError, AttributeError):
        return False


def one_line(err: BaseException) -> str:
    """An error as metrics.json and the sweep's summary show it: our own errors' message, else type: message."""
    text = str(err) if isinstance(err, UsageError | StopRequested) else f"{type(err).__name__}: {err}"
    return first_line(text, type(err).__name__)


class SignalStop(Listener):
    """SIGTERM/SIGINT/SIGUSR2 set `flag` instead of killing the process; the previous handlers come back at the end.

    The loop checks the flag after every step, a safe point: the run then saves what it can and exits with
    128 + the signal number. Without a main thread (some launchers) there are no handlers and no flag.
    """

    def __init__(self) -> None:
        self.flag = StopFlag()
        self.handlers: signals.Handlers | None = None

    def on_run_start(self, state: TrainState) -> None:
        def request_stop(signum: int, _frame: Any) -> None:
            self.flag.signal = signum

        self.handlers = signals.Handlers(request_stop)

    def on_run_end(self, state: TrainState, status: str) -> None:
        if self.handlers is not None:
            self.handlers.restore()


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

    def __init__(self, start_tracker: Callable[[str | None, dict], Any], out_dir: Path) -> None:
        self.start_tracker, self.out_dir, self.tracker = start_tracker, out_dir, None

    def on_run_start(self, state: TrainState) -> None:
        derived = {key: state.record[key] for key in ("lr_min", "lr_max", "lr_source")}
        self.tracker = self.start_tracker(state.record.get("tracker_run_id"), derived)
        state.record.update(tracker_run_id=getattr(self.tracker, "run_id", None))
        curve = self.out_dir / lr_finder.JSON_NAME
        if curve.is_file() and not state.record["epochs"]:  # a resumed run logged it already
            history = json.loads(curve.read_text())["history"]
            rows = [{"lr": lr, "loss": loss} for lr, loss in zip(history["lr"], history["loss"], strict=True)]
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
            plots.wait_for_figures(self.out_dir / lr_finder.PLOT_NAME)  # drawn on the figure thread
            if (self.out_dir / lr_finder.PLOT_NAME).is_file():
                self.tracker.log_images(
                    {"lr_finder": self.out_dir / lr_finder.PLOT_NAME}, len(state.record["lr_per_step"]) - 1
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

    # the row's keys the trainer writes (train.py); a callback's own keys get a line of their own
    TRAINERS_KEYS = frozenset(("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "ema",
                               "train_time_s", "epoch_time_s", "images_per_s", "mfu"))  # fmt: skip

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
        if own := [f"{key} {_briefly(value)}" for key, value in row.items() if key not in self.TRAINERS_KEYS]:
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
