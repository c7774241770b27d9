"""Train the mission's ResNet-9: `python -m resnet9.train [overrides]`, or `--multirun` for sweeps.

The recipe, in `train`: validate the config -> build (device, data, model) -> LRMIN/LRMAX (the range test,
cached; or the numbers given) -> the training state (model, optimizer, One Cycle, EMA, loader, record; loaded
from last.pt when resuming) -> for each epoch: train, evaluate, notify the listeners (checkpoint,
metrics.json, W&B, console) -> return the final test accuracy (what sweepers optimise).

Everything lands in Hydra's output folder: outputs/<date>/<time>/ for a run, multirun/<date>/<time>/<job>/
for each job of a sweep. Under torchrun the processes train one data-parallel job; rank 0 alone runs the
range test, evaluates and writes (see distributed.py).
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m resnet9.train --version` (or --help): answered before torch is imported
    from resnet9.cli import answer_if_asked

    answer_if_asked("config")

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import NoReturn

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from resnet9 import report
from resnet9.analysis import model_table
from resnet9.core import files, jobcache, signals, slurm
from resnet9.core.errors import (
    UsageError,
    exit_on_usage_error,
    exit_with,
    hydra_errors_in_one_line,
    in_multirun,
    to_log_files,
)
from resnet9.data.datasets import ImageData
from resnet9.models.resnet9 import count_parameters
from resnet9.training.config import schema

# `ddp`, not `distributed`: submitit's launcher pickles this module's functions by value, and cloudpickle
# would take a module-level name `distributed` for the unpicklable torch.distributed.
from resnet9.training.engine import build, cuda_graph
from resnet9.training.engine import distributed as ddp
from resnet9.training.engine.ema import WeightEMA
from resnet9.training.engine.epoch import Epochs
from resnet9.training.engine.lifecycle import Listener, SignalStop, job_record, not_requeued, notifying, one_line
from resnet9.training.engine.loop import (
    Batches,
    StepSettings,
    StopFlag,
    StopRequested,
    warm_up,
)
from resnet9.training.engine.state import RunLRs, RunRecord, Stopwatch, TrainState, read_resumable, saved_lrs
from resnet9.training.lr import derive, rules
from resnet9.training.recording import callbacks, tracking
from resnet9.training.recording.listeners import CheckpointWriter, ConsoleLog, MetricsFile, SummaryAndCurves, TrackerLog
from resnet9.training.sweeps import search, sweep


def main() -> None:
    """The command: join torchrun's processes if started by it (before Hydra names the output folder), run."""
    ddp.refuse_copies_without_torchrun()
    ddp.register_resolvers()
    ddp.init()
    try:
        with hydra_errors_in_one_line(), report.cluster_job_errors_in_one_line():
            hydra_main()
    finally:
        try:  # a sweep Hydra stopped early (a failed job, a signal) still gets its summary
            report.end_unfinished_sweep()
        except Exception as err:  # ...but never in place of how the command ends
            logging.getLogger(__name__).warning("could not write the sweep's summary: %s", err)
        ddp.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    overrides = sweep.task_overrides(HydraConfig.get())
    # rank 0 leaves the job's metrics.json however the job ends, even before training (lifecycle.job_record)
    record = (
        job_record(out_dir, lambda: _config_for_record(cfg), overrides)
        if ddp.world().is_main
        else contextlib.nullcontext()
    )
    try:
        with exit_on_usage_error(), record:
            if ddp.world().is_parallel and in_multirun():
                raise UsageError("--multirun under torchrun is not supported; start one torchrun per job instead")
            return train(cfg, out_dir)
    except StopRequested as stopped:  # a stop signal: last.pt holds what a resume needs
        _end_stopped(stopped, out_dir)


def _end_stopped(stopped: StopRequested, out_dir: Path) -> NoReturn:
    """The job saved and recorded its stop: a SIGUSR2 now goes on to submitit's handler, which requeues the job
    and exits; else one line -- the cluster requeues it, or how to resume -- and exit status 128 + the signal."""
    resumes = f"resumes from {out_dir / 'last.pt'}"
    if stopped.requeued and stopped.signal == signals.REQUEUE_SIGNAL:
        to_log_files(message := f"{stopped}; saved for submitit to requeue the job, which then {resumes}")
        print(message, file=sys.stderr)
    try:
        signals.pass_on(stopped.signal)  # submitit's requeuer exits in there, once the job is requeued
    except Exception as declined:  # submitit's UncompletedJobError: timed out max_num_timeout times
        if slurm.requeue_underway():  # the requeue went through; SLURM stopped its `scontrol requeue` with the step
            exit_with(f"{stopped}; SLURM requeues the job, which {resumes}", 128 + stopped.signal)
        reason = one_line(declined)
        if ddp.world().is_main:
            not_requeued(out_dir, reason)
        exit_with(f"{stopped}; not requeued ({reason}); {_how_to_resume(out_dir)}", 128 + stopped.signal)
    # a SIGUSR2 handler that returned did not requeue; after SIGTERM, SLURM requeues the job itself
    requeued = bool(stopped.requeued) and stopped.signal != signals.REQUEUE_SIGNAL
    if requeued:  # SLURM requeues it (scontrol requeue, a pre-emption): the rerun resumes from last.pt by itself
        exit_with(f"{stopped}; SLURM requeues the job, which {resumes}", 128 + stopped.signal)
    if ddp.world().is_main:
        not_requeued(out_dir)  # (a stop during a requeued run's setup: its record no longer waits)
    exit_with(f"{stopped}; {_how_to_resume(out_dir)}", 128 + stopped.signal)


def _how_to_resume(out_dir: Path) -> str:
    if in_multirun():  # the sweep's jobs keep their folders: completed ones finish at once, the others resume
        sweep_dir = HydraConfig.get().sweep.dir
        return f"resume the sweep by rerunning the same command with hydra.sweep.dir={sweep_dir}"
    return f"resume by rerunning with the same output folder ({out_dir})"


def _config_for_record(cfg: DictConfig) -> dict:
    """The config for a record, resolved where it can be (a bad interpolation may be why the job failed)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        return OmegaConf.to_container(cfg, resolve=False)


def train(cfg: DictConfig, out_dir: Path) -> float:
    """Train as `cfg` says, writing every result under `out_dir`; return the final test accuracy (0..1)."""
    clock, world = Stopwatch(), ddp.world()
    with clock.phase("setup"):
        schema.validate(cfg, processes=world.size)
        if world.is_main:
            tracking.check_login(cfg.logger)  # W&B online: its login, before the data load and the range test
        else:  # rank 0 reports; the other ranks only warn
            logging.getLogger().setLevel(logging.WARNING)
        device = build.device(cfg.device, world)
        build.seed_everything(cfg.seed, cfg.deterministic)
        settings = build.step_settings(cfg, device)
        with ddp.main_first():  # one download, by rank 0
            data_set = build.dataset(cfg.data)
        _check_fits(cfg, data_set)
        model = build.model(cfg.model, settings, reuse=cfg.compile and not world.is_parallel)
        own_callbacks = callbacks.from_config(cfg) if world.is_main else {}  # rank 0 alone records (and calls them)

        loader = build.train_loader(cfg, data_set, settings, cfg.seed, world)
        build.check_schedule(cfg, steps_per_epoch=len(loader))  # before the range test, not after it

        resumed = read_resumable(out_dir / "last.pt", cfg, device)
        if resumed is not None:  # the LRs the interrupted run derived: no new range test
            lrs = saved_lrs(resumed)
        else:  # rank 0 runs the range test (if one is needed); every rank trains with its LRs
            lrs = ddp.broadcast(derive.lrs_for_run(cfg, data_set, settings, out_dir) if world.is_main else None)
        state = _training_state(cfg, model, loader, data_set, lrs, clock)
        state.callbacks = own_callbacks  # their state is checkpointed, and given back on a resume
        if resumed is not None:
            _resume(state, resumed, out_dir / "last.pt")
        if state.scaler is not None:  # after the resume: a checkpoint may hold no momentum yet
            build.ready_for_loss_scaling(state.optimizer)
        test_batches = build.test_loader(cfg, data_set, settings)

    stop = SignalStop()
    # the user's callbacks before the recorders, so that what they add to an epoch's row is recorded
    recorders = _recording_listeners(cfg, out_dir, device, lrs.reading) if world.is_main else []
    listeners = [stop, *own_callbacks.values(), *recorders]
    listeners += search.trial_listeners() if world.is_main else []  # last: every other listener has the epoch
    with notifying(listeners, state, stop.flag):
        _fit(cfg, state, test_batches, settings, listeners, stop.flag)
    return ddp.broadcast(state.record.get("final_test_acc"))


def _check_fits(cfg: DictConfig, images: ImageData) -> None:
    """A training batch the data set can fill (the schema checks this for data.limit_train; here, for a whole
    data set of any size)."""
    if cfg.batch_size > len(images.train_labels):
        raise UsageError(
            f"batch_size={cfg.batch_size} is larger than the {len(images.train_labels)} training images, so an "
            f"epoch would have no full batch; lower batch_size or raise data.limit_train"
        )


def _training_state(
    cfg: DictConfig,
    model: torch.nn.Module,
    loader: Batches,
    data_set: ImageData,
    lrs: RunLRs,
    clock: Stopwatch,
) -> TrainState:
    """A fresh state: optimizer at LRMAX, One Cycle from LRMIN, the EMA if asked for, and the run's record."""
    lr_min, lr_max = lrs.lr_min, lrs.lr_max
    device = next(model.parameters()).device
    autocast = build.autocast_dtype(cfg.precision, device)
    scaler = build.loss_scaler(autocast, device)
    fused = build.fused_kernels(cfg.optimizer, device, loss_scaling=scaler is not None)
    optimizer = build.optimizer(cfg.optimizer, model, lr_max, **fused)
    scheduler = build.scheduler(cfg, optimizer, lr_min, lr_max, steps_per_epoch=len(loader))
    ema = None
    if cfg.ema.decay > 0:  # averages BatchNorm statistics too (use_buffers), so the average is ready to evaluate
        ema = WeightEMA(model, cfg.ema.decay)
    record = RunRecord(
        clock,
        config=OmegaConf.to_container(cfg, resolve=True),
        overrides=sweep.task_overrides(HydraConfig.get()) if HydraConfig.initialized() else [],
        device=str(device),
        precision=build.precision_name(autocast),
        torch=torch.__version__,
        code=tracking.code_version(),  # the package version; the git commit and whether the tree was dirty
        parameters=count_parameters(model),
        processes=ddp.world().size,  # torchrun's data-parallel processes; batch_size is the global batch
        n_train=len(data_set.train_labels),
        n_test=len(data_set.test_labels),
        test_digest=data_set.test_digest(),  # evaluate checks it scores these very images
        classes=_class_names(data_set),  # what predict names the outputs
        image_shape=list(data_set.image_shape),  # (height, width, channels): what predict resizes and converts to
        steps_per_epoch=len(loader),
        lr_min=lr_min,
        lr_max=lr_max,
        lr_source=lrs.source,
    )
    if device.type == "cuda":  # for each epoch's model FLOPs utilisation
        record.update(**_flops(model, record["config"]["model"], device, _input_shape(record)))
    return TrainState(model, optimizer, scheduler, ema, loader, record, cfg.ema.start_epoch, scaler=scaler)


def _flops(
    model: torch.nn.Module, model_cfg: dict, device: torch.device, input_shape: tuple[int, int, int]
) -> dict[str, float | None]:
    """The training FLOPs per image (counted once per model setting and image shape in a process: every sweep job
    of it shares the count) and the card's peak, from which each epoch's MFU follows."""
    key = [model_cfg, list(input_shape)]
    per_image = jobcache.shared.get("flops", key, lambda: model_table.training_flops_per_image(model, input_shape))
    return {"flops_per_image": per_image, "peak_flops": model_table.peak_flops(torch.cuda.get_device_name(device))}


def _input_shape(record: RunRecord) -> tuple[int, int, int]:
    """(channels, height, width) of the run's images, as a model takes them."""
    height, width, channels = record["image_shape"]
    return channels, height, width


def _class_names(images: ImageData) -> list[str]:
    # Apart from any function that uses `torch`: cloudpickle (submitit, joblib) pickles such a function with every
    # loaded torch submodule its attribute names match, and `torch.classes` cannot be pickled.
    return list(images.classes)


def _resume(state: TrainState, checkpoint: dict, path: Path) -> None:
    """Continue from last.pt: after its last complete epoch, or at the very step where a stop came."""
    state.resume(checkpoint, path)
    state.record.update(resumed_from_epoch=state.epoch + 1)
    if state.epoch_sums is not None:
        steps = state.record["steps_per_epoch"]
        state.record.update(resumed_from_step=state.epoch * steps + len(state.epoch_sums.lrs))


def _recording_listeners(
    cfg: DictConfig, out_dir: Path, on: torch.device, reading: rules.LRRange | None
) -> list[Listener]:
    """Rank 0's listeners, in the order they are told: checkpoint, run files, tracker (with the range test's curve,
    when this run read one), console, metrics.json."""
    config = OmegaConf.to_container(cfg, resolve=True)
    identity = tracking.run_identity(cfg.logger.get("group"))

    wanted = cfg.logger.get("system_metrics", False)
    system_metrics = on.type == "cuda" if wanted == "auto" else wanted  # auto: GPU runs only

    def start_tracker(run_id: str | None, derived: dict) -> tracking.Tracker:
        tracked = {**config, **derived, "code": tracking.code_version(),
                   **({"sweep": identity.sweep} if identity.sweep else {})}  # fmt: skip
        tags = [*cfg.logger.get("tags", []), *identity.tags]
        return tracking.start(
            cfg.logger, config=tracked, dir=out_dir, name=identity.name, group=identity.group, run_id=run_id,
            tags=tags, system_metrics=system_metrics,
        )  # fmt: skip

    # Mid-epoch checkpoints in one process only: under torchrun a rank's running sums cover its own slice.
    writer = files.BackgroundWriter()  # last.pt, then metrics.json, beside the next epoch's training
    checkpoints = [CheckpointWriter(out_dir / "last.pt", config, writer, mid_epoch=not ddp.world().is_parallel)]
    return [
        *(checkpoints if cfg.checkpoint else []),
        SummaryAndCurves(out_dir, config["model"]),
        TrackerLog(start_tracker, out_dir, curve=None if reading is None else reading.history),
        ConsoleLog(out_dir),
        MetricsFile(out_dir, writer),
    ]


def _fit(
    cfg: DictConfig,
    state: TrainState,
    test_batches: Batches,
    settings: StepSettings,
    listeners: list[Listener],
    stop: StopFlag,
) -> None:
    """The epochs: train and evaluate (engine/epoch.py: the row), record, notify."""
    # DDP (under torchrun) and the compiled module share their parameters with `state.model`: checkpoints and
    # evaluation use the model itself.
    trained = ddp.wrap(state.model, settings.device)
    trained = build.compiled(trained) if cfg.compile else trained
    clock = state.record.clock
    if cfg.warmup is True or (cfg.warmup == "auto" and settings.device.type == "cuda"):
        with clock.phase("warmup"), state.untouched():
            eval_batches = [cfg.eval_batch_size, state.record["n_test"] % cfg.eval_batch_size or cfg.eval_batch_size]
            batch = cfg.batch_size // ddp.world().size
            warm_up(trained, state.optimizer, settings, batch, eval_batches, _input_shape(state.record))
    step = _captured_step(cfg, state, trained, settings) if cfg.cuda_graph and state.epoch < cfg.epochs else None
    epochs = Epochs(cfg, state, trained, settings, test_batches, stop, step)
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if ddp.broadcast(state.record.get("stopped_early")) is not None:  # a callback ended the run (every rank)
            break
        ran = epochs.run(epoch)
        if ran is None:  # rank 0 evaluates and records; the others go on to the next epoch
            continue
        row, result = ran
        state.record.add_epoch(row, result.lrs)
        state.scheduler.after_epoch(row)  # a schedule stepped per epoch (interval: epoch; ReduceLROnPlateau)
        with clock.phase("write"):
            for listener in listeners:
                listener.on_epoch_end(state, row, result)


def _captured_step(
    cfg: DictConfig, state: TrainState, trained: torch.nn.Module, settings: StepSettings
) -> cuda_graph.CapturedStep | None:
    """cuda_graph=true: the training step captured once (before the first epoch, outside its time), or None."""
    with state.record.clock.phase("warmup"):
        started = time.perf_counter()
        world = ddp.world()
        step = cuda_graph.capture_step(
            trained, state.optimizer, settings, cfg.batch_size // world.size, state.scaler, world.is_parallel,
            cycles_momentum=cfg.scheduler.get("cycle_momentum", False), input_shape=_input_shape(state.record),
        )  # fmt: skip
        state.record.update(cuda_graph=step is not None, capture_s=time.perf_counter() - started)
    return step


if __name__ == "__main__":
    main()
