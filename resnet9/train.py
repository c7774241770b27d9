"""The Hydra entry point: `python -m resnet9.train [overrides]`, or `--multirun` for sweeps.

One run, top to bottom:
  validate config -> seed -> load CIFAR-10 -> build model -> LRMIN/LRMAX (range test, cached) ->
  loaders (device-resident or albumentations) -> optimizer + One Cycle -> for each epoch: train (per-batch
  LR step), evaluate on the test set, record metrics.json + last.pt + W&B -> curves.png -> return the final
  test accuracy (for sweepers).

Everything lands in Hydra's output folder: outputs/<date>/<time>/ for a run, multirun/<date>/<time>/<job>/
for each job of a sweep. Under torchrun the processes train one data-parallel job and rank 0 alone writes
(see distributed.py).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

# `ddp`, not `distributed`: with `config` also named here, cloudpickle (submitit's launcher pickles this
# module's functions) would take both names for the unpicklable module torch.distributed.config.
from resnet9 import config, data, lr_find, plots, resume, summary, tracking
from resnet9 import distributed as ddp
from resnet9.loop import Batches, EpochProgress, StepSettings, StopFlag, StopRequested, evaluate, train_one_epoch
from resnet9.model import count_parameters

log = logging.getLogger(__name__)


def main() -> None:
    """The command: join torchrun's processes if started by it (before Hydra names the output folder), run."""
    ddp.init()
    try:
        hydra_main()
    finally:
        ddp.finish()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with config.exit_on_usage_error():
            return train(cfg, out_dir)
    except StopRequested as stopped:  # SIGTERM/SIGINT: last.pt holds what a resume needs; say so, exit
        print(f"{stopped}; resume by rerunning with the same output folder ({out_dir})", file=sys.stderr)
        sys.exit(128 + stopped.signal)


def train(cfg: DictConfig, out_dir: Path) -> float:
    """Train as `cfg` says, writing every result under `out_dir`; return the final test accuracy (0..1)."""
    here = ddp.world()
    config.validate(cfg)
    if here.is_parallel and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise config.UsageError("--multirun under torchrun is not supported; start one torchrun per job instead")
    if not here.is_main:  # rank 0 reports; the other ranks only warn
        logging.getLogger().setLevel(logging.WARNING)
    device = config.resolve_device(cfg.device)
    if device.index is not None:  # cuda:N (each torchrun process its own GPU): make it the current device
        torch.cuda.set_device(device)
    config.seed_everything(cfg.seed, cfg.deterministic)
    with config.data_errors_as_usage_errors(), ddp.main_first():  # one download, by rank 0
        dataset = data.load(
            to_absolute_path(cfg.data.root), cfg.data.download, cfg.data.limit_train, cfg.data.limit_test
        )
    settings = StepSettings(
        device=device,
        memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format,
        autocast_dtype=config.autocast_dtype(cfg.precision, device),
        label_smoothing=cfg.label_smoothing,
        log_every=cfg.log_every,
    )
    model = instantiate(cfg.model).to(device, memory_format=settings.memory_format)
    if here.is_main:
        (out_dir / "model_summary.txt").write_text(summary.describe(model) + "\n")
    resumed = resume.load_resumable(out_dir / "last.pt", cfg)
    if resumed is None:  # rank 0 runs the range test; every rank trains with its LRs
        lr_min, lr_max, lr_source = ddp.broadcast(_resolve_lrs(cfg, dataset, device, out_dir) if here.is_main else None)
    else:  # the LRs the interrupted run derived: no new range test
        lr_min, lr_max, lr_source = resumed["lr_min"], resumed["lr_max"], resumed["train_state"]["metrics"]["lr_source"]

    augmentation = instantiate(cfg.augment)
    train_loader = augmentation.train_loader(
        dataset.train_images, dataset.train_labels, cfg.batch_size, device, cfg.seed,
        num_workers=cfg.data.num_workers, memory_format=settings.memory_format, rank=here.rank, world_size=here.size,
    )  # fmt: skip
    test_loader = augmentation.test_loader(  # built everywhere, used by rank 0 only
        dataset.test_images, dataset.test_labels, cfg.eval_batch_size, device,
        num_workers=cfg.data.num_workers, memory_format=settings.memory_format,
    )  # fmt: skip
    optimizer = instantiate(cfg.optimizer, _convert_="all")(model.parameters(), lr=lr_max, **_fused(cfg, device))
    scheduler = instantiate(cfg.scheduler)(
        optimizer, lr_min=lr_min, lr_max=lr_max, epochs=cfg.epochs, steps_per_epoch=len(train_loader)
    )
    ema = None
    if cfg.ema.decay > 0:  # averages BatchNorm statistics too (use_buffers), so the average is ready to evaluate
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema.decay), use_buffers=True)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    metrics: dict[str, Any] = {
        "status": "running",
        "config": resolved,
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "device": str(device),
        "precision": "bf16 autocast" if settings.autocast_dtype else "fp32",
        "torch": torch.__version__,
        "parameters": count_parameters(model),
        "processes": here.size,  # torchrun's data-parallel processes; batch_size is the global batch
        "n_train": len(dataset.train_labels),
        "n_test": len(dataset.test_labels),
        "steps_per_epoch": len(train_loader),
        "lr_min": lr_min,
        "lr_max": lr_max,
        "lr_source": lr_source,
        "epochs": [],
        "lr_per_step": [],
    }
    start_epoch, progress = 1, None
    if resumed is not None:
        state = resumed["train_state"]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        resume.restore_rng(state["rng"], train_loader.generator)
        metrics.update({key: state["metrics"][key] for key in RESUMED_METRICS if key in state["metrics"]})
        metrics["resumed_from_epoch"] = start_epoch = resumed["epoch"] + 1
        partial = state.get("partial_epoch")
        if partial is not None:  # a stop mid-epoch: replay the loader to that step, carry the epoch's sums on
            train_loader.generator.set_state(partial["loader_state"])
            train_loader.skip_batches = len(partial["lrs"])
            progress = EpochProgress.from_state(partial, device)
            metrics["resumed_from_step"] = (start_epoch - 1) * len(train_loader) + len(partial["lrs"])
        log.info("resuming from %s after epoch %d%s", out_dir / "last.pt", resumed["epoch"],
                 f" and {len(partial['lrs'])} steps of the next" if partial else "")  # fmt: skip
    metrics_path = out_dir / "metrics.json"
    if here.is_main:
        tracking.write_json(metrics_path, metrics)
    log.info(
        "%d train / %d test images on %s (%s); %s parameters; LRMIN=%.4g LRMAX=%.4g (%s)",
        metrics["n_train"], metrics["n_test"], device, metrics["precision"], f"{metrics['parameters']:,}",
        lr_min, lr_max, lr_source,
    )  # fmt: skip

    name, group = _run_name_and_group(cfg)
    run_id = resumed["train_state"].get("tracker_run_id") if resumed else None
    tracker = None
    stop = StopFlag()
    exit_code, status = 1, "failed"
    try:
        if here.is_main:
            tracker = instantiate(cfg.logger, _convert_="all")(
                config=resolved, dir=out_dir, name=name, group=group, run_id=run_id
            )
        else:
            tracker = tracking.NullTracker()
        with resume.stop_on_signals() as stop:
            training = Training(model, optimizer, scheduler, ema, train_loader, test_loader, settings, stop)
            _fit(cfg, training, start_epoch, tracker, metrics, out_dir, progress)
        exit_code, status = 0, "completed"
    except StopRequested:
        status = "interrupted"
        raise
    except BaseException as err:
        if stop.signal is not None:  # under torchrun a stopped rank can leave another inside a collective: the
            status = "interrupted"  # error it gets there is the stop's doing
            raise StopRequested(stop.signal) from err
        metrics["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        metrics["status"] = status
        if here.is_main:
            tracking.write_json(metrics_path, metrics)
        if tracker is not None:
            tracker.finish(exit_code=exit_code)
    return ddp.broadcast(metrics.get("final_test_acc"))


@dataclass
class Training:
    """What the epoch loop works on."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None
    train_loader: Batches
    test_loader: Batches
    settings: StepSettings
    stop: StopFlag


# Keys of metrics.json that a resumed run carries on from its checkpoint.
RESUMED_METRICS = ("epochs", "lr_per_step", "first_step_s", "final_test_acc", "best_test_acc", "best_epoch",
                   "train_time_s")  # fmt: skip


def _fit(
    cfg: DictConfig,
    run: Training,
    start_epoch: int,
    tracker: Any,
    metrics: dict[str, Any],
    out_dir: Path,
    progress: EpochProgress | None = None,
) -> None:
    """The epoch loop: train, evaluate, record. Fills `metrics` in place and rewrites metrics.json each epoch.

    `progress`: the steps already done in `start_epoch` (resuming a checkpoint written by a stop mid-epoch).
    """
    steps_per_epoch = len(run.train_loader)
    main_rank = ddp.world().is_main
    # DDP (under torchrun) and the compiled module share their parameters with `model`: checkpoints and
    # evaluation use `model` itself.
    trained = ddp.wrap(run.model, run.settings.device)
    trained = torch.compile(trained) if cfg.compile else trained
    for epoch in range(start_epoch, cfg.epochs + 1):
        started = time.perf_counter()
        bar = tqdm(
            run.train_loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not (cfg.progress and main_rank), leave=False,
            dynamic_ncols=True,
        )  # fmt: skip
        first_step = (epoch - 1) * steps_per_epoch
        averaging = run.ema if run.ema is not None and epoch >= cfg.ema.start_epoch else None
        try:
            train_loss, train_acc, lrs = train_one_epoch(
                trained, bar, run.optimizer, run.scheduler, run.settings, first_step, tracker, averaging, metrics,
                run.stop, progress if epoch == start_epoch else None,
            )  # fmt: skip
        except StopRequested as stopped:
            # Keep the steps done in this epoch too, where they can be replayed exactly: the device engine
            # (its position is a generator state plus a batch count) in a single process (one rank's sums).
            if (
                cfg.checkpoint
                and stopped.progress is not None
                and main_rank
                and not ddp.is_active()
                and hasattr(run.train_loader, "epoch_start_state")
            ):
                partial = {"epoch": epoch, "loader_state": run.train_loader.epoch_start_state,
                           **stopped.progress.state_dict()}  # fmt: skip
                _save_checkpoint(run, metrics, tracker, out_dir / "last.pt", epoch - 1, run.model, partial)
            raise
        train_time = time.perf_counter() - started
        ddp.check_replicas_in_sync(run.model)
        if not main_rank:  # rank 0 evaluates and records; the others go on to the next epoch's first step
            continue
        evaluated = averaging.module if averaging is not None else run.model
        test_loss, test_acc = evaluate(evaluated, run.test_loader, run.settings, tta=cfg.eval_tta)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lrs[-1],
            "ema": averaging is not None,
            "train_time_s": train_time,
            "epoch_time_s": time.perf_counter() - started,
        }
        metrics["epochs"].append(row)
        metrics["lr_per_step"].extend(lrs)
        best = max(metrics["epochs"], key=lambda r: r["test_acc"])
        metrics.update(
            final_test_acc=test_acc,
            best_test_acc=best["test_acc"],
            best_epoch=best["epoch"],
            train_time_s=sum(r["train_time_s"] for r in metrics["epochs"]),
        )
        if cfg.checkpoint:
            _save_checkpoint(run, metrics, tracker, out_dir / "last.pt", epoch, evaluated)
        # metrics.json after the checkpoint: an epoch it lists is always one a resume starts after.
        tracking.write_json(out_dir / "metrics.json", metrics)
        tracker.log({f"epoch/{key}": value for key, value in row.items()}, step=first_step + steps_per_epoch - 1)
        log.info(
            "epoch %2d/%d  train loss %.4f acc %.2f%%  test loss %.4f acc %.2f%%  lr %.4g  %.1fs",
            epoch, cfg.epochs, train_loss, 100 * train_acc, test_loss, 100 * test_acc, lrs[-1], row["epoch_time_s"],
        )  # fmt: skip

    if not main_rank:
        return
    images = {"curves": plots.training_curves(metrics, out_dir / "curves.png")}
    if (out_dir / lr_find.PLOT_NAME).is_file():
        images["lr_finder"] = out_dir / lr_find.PLOT_NAME
    tracker.log_images(images, step=cfg.epochs * steps_per_epoch - 1)
    summary_keys = ("final_test_acc", "best_test_acc", "best_epoch", "train_time_s", "lr_min", "lr_max", "parameters")
    tracker.summary({key: metrics[key] for key in summary_keys})
    log.info(
        "final test accuracy %.2f%% (best %.2f%% at epoch %d); training time %.1fs; results in %s",
        100 * metrics["final_test_acc"], 100 * metrics["best_test_acc"], metrics["best_epoch"],
        metrics["train_time_s"], out_dir,
    )  # fmt: skip


def _save_checkpoint(
    run: Training,
    metrics: dict[str, Any],
    tracker: Any,
    path: Path,
    epoch: int,
    evaluated: nn.Module,
    partial_epoch: dict[str, Any] | None = None,
) -> None:
    """last.pt after `epoch` complete epochs (plus, after a stop, the steps done in the next one)."""
    tracking.save_checkpoint(path, {
        "model": evaluated.state_dict(),  # the weights that were evaluated (EMA when averaging)
        "epoch": epoch,
        "config": metrics["config"],
        "lr_min": metrics["lr_min"],
        "lr_max": metrics["lr_max"],
        "test_acc": metrics.get("final_test_acc"),
        "train_state": {  # everything needed to continue exactly from here (see resume.py)
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "rng": resume.capture_rng(run.train_loader.generator),
            "metrics": {key: metrics[key] for key in (*RESUMED_METRICS, "lr_source") if key in metrics},
            "tracker_run_id": getattr(tracker, "run_id", None),
            "partial_epoch": partial_epoch,
        },
    })  # fmt: skip


def _fused(cfg: DictConfig, device: torch.device) -> dict[str, bool]:
    """On CUDA, torch's fused SGD/Adam kernels (one launch for all parameters) unless the config says otherwise."""
    wants = cfg.optimizer.get("fused", "absent")
    return {"fused": True} if device.type == "cuda" and wants is None else {}


def _resolve_lrs(
    cfg: DictConfig, dataset: data.Cifar10, device: torch.device, out_dir: Path
) -> tuple[float, float, str]:
    """LRMIN and LRMAX: numbers from the config where given, the range test's (times lr_finder.scale) where auto."""
    lr_max, lr_min = cfg.optimizer.lr, cfg.scheduler.lr_min
    if lr_max != config.AUTO and lr_min != config.AUTO:
        return float(lr_min), float(lr_max), "config"
    found = lr_find.find_lr_range(cfg, dataset, device, out_dir)
    scale = cfg.lr_finder.scale
    source = "range test (cached)" if found.cached else "range test"
    if scale != 1:
        source += f" x {scale:g}"
    lr_max = found.lr_max * scale if lr_max == config.AUTO else float(lr_max)
    lr_min = found.lr_min * scale if lr_min == config.AUTO else float(lr_min)
    if not lr_min < lr_max:
        raise config.ConfigError(
            f"LRMIN={lr_min:.4g} is not below LRMAX={lr_max:.4g} (from {source} and the config); "
            f"set both optimizer.lr and scheduler.lr_min, or leave both auto"
        )
    return lr_min, lr_max, source


def _run_name_and_group(cfg: DictConfig) -> tuple[str, str | None]:
    """Name a run after its overrides; put every job of one sweep into one group (W&B compares groups)."""
    if not HydraConfig.initialized():
        return "run", cfg.logger.get("group")
    hydra_cfg = HydraConfig.get()
    name = hydra_cfg.job.override_dirname or "defaults"
    group = cfg.logger.get("group")
    if group is None and hydra_cfg.mode == RunMode.MULTIRUN:
        group = tracking.sweep_group(Path(hydra_cfg.sweep.dir))
    return name, group


if __name__ == "__main__":
    main()
