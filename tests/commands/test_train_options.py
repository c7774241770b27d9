"""The speed and accuracy options of the trainer, on CPU: precision, fused optimizer, compile, TTA, EMA."""

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from resnet9.core import jobcache
from resnet9.core.errors import ConfigError, TrainingDiverged
from resnet9.data import augment, datasets
from resnet9.models.resnet9 import ResNet9
from resnet9.train import train
from resnet9.training.config import schema
from resnet9.training.engine import build
from resnet9.training.engine import epoch as engine_epoch
from resnet9.training.engine.loop import StepSettings, evaluate, train_one_epoch
from resnet9.training.engine.state import RunRecord
from resnet9.training.lr import range_test as lr_finder
from resnet9.training.recording import callbacks
from resnet9.training.recording.listeners import ConsoleLog, TrackerLog

CONF = str(Path(__file__).resolve().parents[2] / "conf")
CPU = torch.device("cpu")


def compose_small(root: Path, *extra: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[
                f"data.root={root}", "data.limit_train=200", "data.limit_test=100", "batch_size=50",
                "model.width=0.125", "epochs=3", "scheduler.peak_epoch=1", "optimizer.lr=0.1",
                "scheduler.lr_min=0.01", "logger=none", "progress=false", "device=cpu", *extra,
            ],
        )  # fmt: skip


@pytest.mark.parametrize(
    "capability, expected",
    [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((7, 5), torch.float16)],
    ids=["H100", "A100", "T4"],
)
def test_precision_auto_picks_what_the_card_does_fast(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda")
    assert build.autocast_dtype("auto", cuda) is expected
    assert (build.loss_scaler(expected, CPU) is not None) == (expected is torch.float16)  # fp16 scales the loss
    assert build.autocast_dtype("auto", CPU) is None and build.autocast_dtype("fp32", cuda) is None
    assert build.autocast_dtype("bf16", CPU) is torch.bfloat16 and build.autocast_dtype("fp16", CPU) is torch.float16
    assert build.precision_name(torch.float16) == "fp16 autocast + loss scaling"


def test_a_schedule_the_run_cannot_have_is_refused_before_the_range_test(synthetic_root, tmp_path, monkeypatch):
    """4 steps cannot hold a peak at 5/24 of the run; the range test (minutes at full width) must not run first."""
    tests = []
    monkeypatch.setattr(lr_finder, "curve", lambda *args, **kwargs: tests.append(args))
    cfg = compose_small(synthetic_root, "epochs=1", "scheduler.peak_epoch=auto", "optimizer.lr=auto",
                        "scheduler.lr_min=auto", "lr_finder.cache=false")  # fmt: skip
    with pytest.raises(ConfigError, match="scheduler.peak_epoch=auto .* puts the LR peak at step 0 of a 4-step run"):
        train(cfg, tmp_path)
    assert tests == [] and not (tmp_path / "lr_finder.json").exists()


def test_fp16_trains_with_loss_scaling_and_checkpoints_the_scale(synthetic_root, tmp_path):
    """The fp16 path end to end on the CPU (CPU autocast has fp16 too); the GPU runs it on older cards."""
    cfg = compose_small(synthetic_root, "precision=fp16", "epochs=2")
    accuracy = train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["precision"] == "fp16 autocast + loss scaling"
    losses = [row["train_loss"] for row in metrics["epochs"]]
    # It learns: the loss falls and the test accuracy beats chance (10 classes). A fixed accuracy bar is not
    # portable: on a CPU with native fp16 (Sapphire Rapids) 2 epochs end at 20 % where another CPU reached 40 %.
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0] - 0.1 and accuracy > 0.1
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["train_state"]["scaler"]
    assert saved["scale"] > 0 and saved["_growth_tracker"] >= 0  # the scaler's state travels with the checkpoint


def test_fused_optimizer_only_on_cuda_unless_forced(synthetic_root):
    cfg = compose_small(synthetic_root)
    assert build.fused_kernels(cfg.optimizer, torch.device("cuda")) == {"fused": True}
    assert build.fused_kernels(cfg.optimizer, CPU) == {}
    forced_off = compose_small(synthetic_root, "optimizer.fused=false")
    assert build.fused_kernels(forced_off.optimizer, torch.device("cuda")) == {}


def uninitialised_is_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uninitialised memory may hold anything: here `torch.empty_like` hands out NaN, so that reading it shows."""
    monkeypatch.setattr(torch, "empty_like", lambda tensor, *args, **kwargs: torch.full_like(tensor, math.nan))


def overflowing_scaler(dtype, on):
    """A GradScaler whose first scale overflows the gradients (as 2^16 often does on a GPU's step 0), then fits."""
    return torch.amp.GradScaler(on.type, init_scale=2.0**100, backoff_factor=2.0**-90) if dtype else None


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # torch: step 0 skipped
def test_fused_sgd_after_an_overflow_on_step_0_steps_exactly_like_sgd(monkeypatch, synthetic_root):
    """Torch's fused SGD makes its momentum buffers on step 0 and skips that step's update when the scaler found an
    overflow: started from zero buffers it then steps exactly like the unfused SGD, which the scaler never calls."""
    uninitialised_is_nan(monkeypatch)
    cfg = compose_small(synthetic_root, "precision=fp16")
    settings = build.step_settings(cfg, CPU)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator))] * 3
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build.model(cfg.model, settings)
        optimizer = build.optimizer(cfg.optimizer, model, lr=0.1, fused=fused)
        scaler = overflowing_scaler(torch.float16, CPU)
        build.ready_for_loss_scaling(optimizer)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        progress = train_one_epoch(model, batches, optimizer, scheduler, settings, scaler=scaler)
        assert scaler.get_scale() == 2.0**10  # step 0 overflowed, steps 1 and 2 did not
        results.append((torch.stack(progress.step_losses), [p.detach().clone() for p in model.parameters()]))
    (losses, weights), (fused_losses, fused_weights) = results
    assert torch.equal(fused_losses, losses)
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(fused_weights, weights, strict=True))


def test_a_fused_fp16_run_survives_an_overflow_on_its_first_step(monkeypatch, synthetic_root, tmp_path):
    """The trainer's path: fp16, fused SGD, the first step's gradients overflowing. Without zero momentum buffers
    the second step reads uninitialised ones (NaN here) and the run diverges."""
    uninitialised_is_nan(monkeypatch)
    monkeypatch.setattr(build, "loss_scaler", overflowing_scaler)
    train(compose_small(synthetic_root, "precision=fp16", "optimizer.fused=true", "epochs=2"), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and math.isfinite(metrics["epochs"][0]["train_loss"])
    momentum = torch.load(tmp_path / "last.pt", weights_only=True)["train_state"]["optimizer"]["state"]
    assert all(torch.isfinite(state["momentum_buffer"]).all() for state in momentum.values())
    # With dampening, zero momentum is not SGD's first step: not fused under loss scaling, refused if forced
    damped = OmegaConf.create({"_target_": "torch.optim.SGD", "momentum": 0.9, "dampening": 0.1, "fused": None})
    assert build.fused_kernels(damped, torch.device("cuda"), loss_scaling=True) == {}
    assert build.fused_kernels(damped, torch.device("cuda")) == {"fused": True}
    forced = torch.optim.SGD(ResNet9(width=0.125).parameters(), lr=0.1, momentum=0.9, dampening=0.1, fused=True)
    with pytest.raises(ConfigError, match="optimizer.fused=true with dampening under fp16 loss scaling"):
        build.ready_for_loss_scaling(forced)


class Asymmetric(nn.Module):
    """Logits that depend on left/right orientation, to see test-time flipping."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x[..., :16].mean((1, 2, 3)), x[..., 16:].mean((1, 2, 3))
        return torch.stack([left - right, right - left], 1)


def test_flip_tta_averages_the_logits_of_both_views():
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long)
    settings = StepSettings(device=CPU)
    loss, acc = evaluate(Asymmetric(), [(images, labels)], settings)
    assert 0 < acc < 1  # orientation decides the class without TTA
    loss_tta, _ = evaluate(Asymmetric(), [(images, labels)], settings, tta=True)
    assert loss_tta == pytest.approx(torch.log(torch.tensor(2.0)).item())  # mirrored views cancel exactly


def test_bf16_autocast_trains_on_cpu_with_fp32_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))
    model(torch.randn(2, 3, 32, 32))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batches = [(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))) for _ in range(3)]
    settings = StepSettings(device=CPU, autocast_dtype=torch.bfloat16)
    epoch = train_one_epoch(model, batches, optimizer, scheduler, settings).read(first_step=0)
    assert torch.isfinite(torch.tensor(epoch.loss)) and len(epoch.lrs) == 3
    assert model[1].running_mean.dtype == torch.float32 and model[0].weight.dtype == torch.float32


def test_ema_evaluates_the_average_of_the_final_epochs(synthetic_root, tmp_path):
    cfg = compose_small(synthetic_root, "ema.decay=0.9", "ema.start_epoch=2")
    train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["ema"] for row in metrics["epochs"]] == [False, True, True]
    # The checkpoint holds the averaged weights that were evaluated: reloaded, they give the same accuracy.
    model = ResNet9(width=0.125)
    model.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=False)["model"])
    data_set = datasets.load(synthetic_root, download=False, limit_test=100)
    loader = augment.DeviceLoader(data_set.test_images, data_set.test_labels, 50, CPU, train=False)
    _, accuracy = evaluate(model, loader, StepSettings(device=CPU))
    assert accuracy == metrics["final_test_acc"]


def test_options_compose_into_a_run_and_compile_really_compiles(synthetic_root, tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = compose_small(synthetic_root, "compile=true", "eval_tta=true", "label_smoothing=0.2", "epochs=2")
    accuracy = train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and accuracy == metrics["final_test_acc"]
    assert counters["stats"]["unique_graphs"] > 0  # the training forward went through torch.compile
    assert metrics["first_step_s"] > 0  # reported apart (its size is for the benchmark, not a test)

    # The next job of a sweep in this process (another seed) reuses the compiled model: no new graph.
    graphs = counters["stats"]["unique_graphs"]
    cfg.seed = 1
    (tmp_path / "next").mkdir()
    train(cfg, tmp_path / "next")
    assert json.loads((tmp_path / "next" / "metrics.json").read_text())["status"] == "completed"
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_reused_model_is_initialised_exactly_like_a_new_one():
    settings = StepSettings(device=CPU, memory_format=torch.channels_last)
    model_cfg = {"_target_": "resnet9.models.resnet9.ResNet9", "num_classes": 10, "width": 0.125, "logit_scale": 0.125}
    jobcache.shared.clear()
    first = build.model(model_cfg, settings, reuse=True)
    F.cross_entropy(first(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()  # a job trains it...
    with torch.no_grad():
        for parameter in first.parameters():
            parameter.add_(parameter.grad)
    torch.manual_seed(3)
    again = build.model(model_cfg, settings, reuse=True)  # ...the next job, seed 3, gets it back re-initialised
    torch.manual_seed(3)
    fresh = build.model(model_cfg, settings)
    assert again is first and build.compiled(again) is build.compiled(first)
    for name, value in fresh.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
        assert again.state_dict()[name].stride() == value.stride(), name  # the layout of the first build stays


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")  # meta tensors hold no values
def test_a_reused_model_draws_its_weights_on_the_cpus_generator_whatever_its_device():
    """A new model is drawn on the CPU and then moved; a reused one must be drawn the same way, not in place on its
    device (on a GPU: the GPU's generator, other weights for the same seed). The meta device (no data, no
    generator) stands in for a GPU here: the CPU's generator must advance exactly as for a new model."""
    settings = StepSettings(device=torch.device("meta"), memory_format=torch.channels_last)
    model_cfg = {"_target_": "resnet9.models.resnet9.ResNet9", "num_classes": 10, "width": 0.125, "logit_scale": 0.125}
    jobcache.shared.clear()
    first = build.model(model_cfg, settings, reuse=True)
    torch.manual_seed(3)
    build.model(model_cfg, settings)
    after_new = torch.get_rng_state()
    torch.manual_seed(3)
    assert build.model(model_cfg, settings, reuse=True) is first
    assert torch.equal(torch.get_rng_state(), after_new)
    jobcache.shared.clear()


def test_timings_add_up_to_the_jobs_wall_time(synthetic_root, tmp_path):
    cfg = compose_small(synthetic_root, "epochs=2", "warmup=true")
    started = time.perf_counter()
    train(cfg, tmp_path)
    wall = time.perf_counter() - started
    timings = json.loads((tmp_path / "metrics.json").read_text())["timings"]
    assert set(timings) == {"setup_s", "warmup_s", "train_s", "eval_s", "write_s", "wall_s"}
    phases = sum(value for key, value in timings.items() if key != "wall_s")
    assert phases == pytest.approx(wall, rel=0.1) and timings["wall_s"] == pytest.approx(wall, rel=0.1)
    assert all(timings[key] > 0 for key in ("setup_s", "warmup_s", "train_s", "eval_s", "write_s"))


class RecordingTracker:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def log(self, metrics: dict, step: int) -> None:
        self.rows.append((step, metrics))


def tiny_training(lr: float = 0.1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(5)]
    return model, optimizer, scheduler, batches


def test_every_steps_loss_and_lr_reach_the_tracker_after_the_epoch():
    model, optimizer, scheduler, batches = tiny_training()
    settings = StepSettings(device=CPU, log_every=1000)  # no progress reads at all
    epoch = train_one_epoch(model, batches, optimizer, scheduler, settings, first_step=20).read(first_step=20)
    tracker = RecordingTracker()
    listener = TrackerLog(start_tracker=lambda run_id, derived: tracker, out_dir=Path("unused"))
    state = SimpleNamespace(record=RunRecord(steps_per_epoch=5, lr_min=0.01, lr_max=0.1, lr_source="config"))
    listener.on_run_start(state)
    listener.on_epoch_end(state, {"epoch": 5, "test_acc": 0.5}, epoch)
    steps = [(step, row) for step, row in tracker.rows if "train/lr" in row]
    assert [step for step, _ in steps] == [20, 21, 22, 23, 24]
    assert [row["train/lr"] for _, row in steps] == epoch.lrs == pytest.approx([0.1 / (1 + k) for k in range(5)])
    step_losses = [row["train/loss"] for _, row in steps]
    assert epoch.loss == pytest.approx(sum(step_losses) / 5)  # equal batch sizes
    assert tracker.rows[-1] == (24, {"epoch/epoch": 5, "epoch/test_acc": 0.5})  # the epoch's row, at its last step


def test_a_diverged_loss_stops_training_with_its_step_and_lr():
    model, optimizer, scheduler, batches = tiny_training(lr=float("inf"))
    progress = train_one_epoch(model, batches * 4, optimizer, scheduler, StepSettings(device=CPU))
    expected = r"the loss became (nan|inf) at step \d+ \(LR .*lr_finder.scale=0.5"
    with pytest.raises(TrainingDiverged, match=expected) as err:
        progress.read(first_step=0)
    assert "\n" not in str(err.value)  # one line, with the fix


def test_an_interrupted_wandb_run_is_marked_preempted_not_just_failed(tmp_path):
    from test_train import wandb_run_files
    from wandb_records import read_finished_run

    from resnet9.training.recording.tracking import WandbTracker

    for name, preempted in (("stopped", True), ("failed", False)):
        tracker = WandbTracker(project="resnet9", mode="offline", config={}, dir=tmp_path / name, name=name)
        tracker.finish(exit_code=1, preempted=preempted)
        types = read_finished_run(wandb_run_files(tmp_path / name)[0])["types"]
        assert ("preempting" in types) == preempted and "exit" in types


def test_wandb_lists_the_installed_packages_once_per_process_and_every_run_keeps_them(tmp_path, monkeypatch):
    """Reading every package's metadata costs W&B 0.2 s per run; a sweep's later jobs reuse the first list."""
    import importlib.metadata

    import wandb

    from resnet9.training.recording.tracking import WandbTracker

    listing = wandb.util.working_set
    monkeypatch.setattr(wandb.util, "working_set", getattr(listing, "original", listing))  # as if first in process
    reads = []
    distributions = importlib.metadata.distributions
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: reads.append(1) or distributions())
    for name in ("first", "second"):
        WandbTracker(project="resnet9", mode="offline", config={}, dir=tmp_path / name, name=name).finish()
    assert len(reads) == 1
    for name in ("first", "second"):
        (requirements,) = (tmp_path / name).glob("wandb/offline-run-*/files/requirements.txt")
        assert "torch==" in requirements.read_text()


def compose_with(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, "logger=none", "progress=false", "device=cpu"])


def test_experiment_quick_cpu_is_a_small_complete_recipe_that_trains(synthetic_root, tmp_path):
    """Its settings as the README promises (measured in full: 43.6 s, 54.8 % on the staged copy, 2-core CPU);
    trained here on a fifth of its images and half its epochs, the rest of it unchanged."""
    cfg = compose_with("experiment=quick_cpu", f"data.root={synthetic_root}")
    schema.validate(cfg)
    assert (cfg.model.width, cfg.data.limit_train, cfg.epochs, cfg.batch_size) == (0.25, 5000, 4, 128)
    assert (cfg.optimizer.lr, cfg.scheduler.lr_min, cfg.scheduler.peak_epoch) == (0.2, 0.02, "auto")  # no range test
    cfg.data.limit_train, cfg.data.limit_test, cfg.epochs = 1000, 200, 2
    assert train(cfg, tmp_path) > 0.5  # the synthetic classes are easy: far above chance (0.1)


def test_experiment_page_is_pages_published_schedule():
    cfg = compose_with("experiment=page")
    schema.validate(cfg)
    assert (cfg.optimizer.lr, cfg.scheduler.lr_min, cfg.scheduler.peak_epoch, cfg.epochs) == (0.4, 0.0004, 5, 24)
    assert (cfg.batch_size, cfg.model.width, cfg.augment.cutout) == (512, 1.0, 8)  # the rest is the mission's


def test_debug_overfit_batch_learns_its_one_batch(synthetic_root, tmp_path):
    cfg = compose_with("debug=overfit_batch", f"data.root={synthetic_root}")
    assert (cfg.augment.pad, cfg.augment.cutout, cfg.batch_size, cfg.data.limit_train) == (0, 0, 50, 50)
    train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps_per_epoch"] == 1 and metrics["epochs"][-1]["train_acc"] == 1.0
    assert not (tmp_path / "last.pt").exists()  # checkpoint=false


def test_an_exploded_test_loss_is_warned_about_with_the_fix(caplog):
    record = RunRecord(lr_max=0.9, final_test_acc=0.1, best_test_acc=0.1, best_epoch=1, train_time_s=1.0)
    for epoch, loss in enumerate([27.5, 5.8], start=1):
        record.data["epochs"].append({"epoch": epoch, "test_loss": loss})
    ConsoleLog(Path("run"))._warn_if_exploded(record)
    assert "the test loss exploded to 27.5 at epoch 1 (a uniform guess scores 2.30): LRMAX=0.9" in caplog.text
    assert "lr_finder.scale=0.5" in caplog.text
    caplog.clear()
    record.data["epochs"] = [{"epoch": 1, "test_loss": 2.1}, {"epoch": 2, "test_loss": float("nan")}]
    ConsoleLog(Path("run"))._warn_if_exploded(record)
    assert "exploded to nan at epoch 2" in caplog.text
    caplog.clear()
    record.data["epochs"] = [{"epoch": 1, "test_loss": 2.1}, {"epoch": 2, "test_loss": 1.2}]
    ConsoleLog(Path("run"))._warn_if_exploded(record)
    assert caplog.text == ""
    record.data["epochs"] = [{"epoch": 1, "test_loss": 7.2}, {"epoch": 2, "test_loss": 1.5}]
    record.update(final_test_acc=0.47)  # a spike around the peak that training recovered from: no word
    ConsoleLog(Path("run"))._warn_if_exploded(record)
    assert caplog.text == ""


def test_a_warm_up_step_changes_nothing_the_run_computes(synthetic_root, tmp_path):
    """warmup=true on the CPU (auto turns it on for CUDA): one throwaway step of each shape before epoch 1,
    undone, so the run's numbers are bit for bit those of a run without it."""
    runs = {}
    for warmup in (False, True):
        cfg = compose_small(
            synthetic_root, f"warmup={str(warmup).lower()}", "epochs=2", "ema.decay=0.9", "ema.start_epoch=1"
        )
        (tmp_path / str(warmup)).mkdir()
        train(cfg, tmp_path / str(warmup))
        runs[warmup] = json.loads((tmp_path / str(warmup) / "metrics.json").read_text())
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
    rows = {warmup: [[row[k] for k in keys] for row in run["epochs"]] for warmup, run in runs.items()}
    assert rows[True] == rows[False] and runs[True]["lr_per_step"] == runs[False]["lr_per_step"]
    assert runs[True]["timings"]["warmup_s"] > 0 and runs[False]["timings"]["warmup_s"] == 0


@pytest.mark.parametrize("progress", [False, True])
def test_an_epoch_reads_the_device_only_for_a_progress_bar(synthetic_root, tmp_path, monkeypatch, progress):
    """Reads from the device (`.item()`, `.tolist()`, `.cpu()`, `bool()`, `float()`, `int()`) inside
    train_one_epoch, counted; with the EMA updating after every step."""

    inside, reads = [False], []
    real_epoch = engine_epoch.train_one_epoch

    def counted_epoch(*args, **kwargs):
        inside[0] = True
        try:
            return real_epoch(*args, **kwargs)
        finally:
            inside[0] = False

    for name in ("item", "tolist", "cpu", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counting(self, *args, _real=real, _name=name, **kwargs):
            if inside[0]:
                reads.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    monkeypatch.setattr(engine_epoch, "train_one_epoch", counted_epoch)
    options = ("log_every=1", "epochs=2", "ema.decay=0.9", "ema.start_epoch=1")  # the EMA updates every step
    train(compose_small(synthetic_root, f"progress={str(progress).lower()}", *options), tmp_path)
    assert (len(reads) > 0) == progress  # with a bar: its running numbers every log_every steps; else none


class OnlyTheEnd:
    """A callback with one hook that derives from nothing (the `_target_` of a test)."""

    def __init__(self) -> None:
        self.statuses: list[str] = []

    def on_run_end(self, state, status: str) -> None:
        self.statuses.append(status)


class MisspeltHook:
    def on_epoch_ends(self, state, row, result) -> None:  # not a hook: the name is one letter off
        pass


class OneMisspeltHook(MisspeltHook):
    def on_run_end(self, state, status: str) -> None:  # a hook, beside the misspelt one
        pass


class EpochHook:
    def on_epoch_end(self, state, row, result) -> None:
        row["mine"] = 1


def test_a_callback_needs_only_the_hooks_it_uses_and_one_misspelt_is_refused():
    cfg = OmegaConf.create({"callbacks": {"end": {"_target_": "test_train_options.OnlyTheEnd"}}})
    (callback,) = callbacks.from_config(cfg).values()
    callback.on_run_start(None)
    callback.on_epoch_end(None, {}, None)
    callback.on_stop(None)
    callback.on_run_end(None, "completed")
    assert callback.callback.statuses == ["completed"]

    hooks = (
        "the hooks are on_run_start, on_epoch_end, on_stop, on_run_end (resnet9/training/recording/callbacks.py says"
    )
    for target, found in (("MisspeltHook", "has on_epoch_ends, not a hook"),
                          ("OneMisspeltHook", "has on_epoch_ends, not a hook")):  # fmt: skip
        cfg = OmegaConf.create({"callbacks": {"typo": {"_target_": f"test_train_options.{target}"}}})
        with pytest.raises(ConfigError) as err:
            callbacks.from_config(cfg)
        assert str(err.value).startswith(f"callbacks.typo (test_train_options.{target}) {found}; {hooks}")


def test_settings_torch_refuses_are_one_line_and_a_bug_in_a_schedule_keeps_its_traceback(synthetic_root):
    cfg = compose_small(synthetic_root, "scheduler._target_=test_train_options.buggy_schedule")
    with pytest.raises(TypeError, match="unsupported operand"):
        build.check_schedule(cfg, steps_per_epoch=4)
    cfg = compose_small(synthetic_root, "optimizer=adam", "optimizer.betas=[0.9,0.999]", "+optimizer.eps=-1")
    with pytest.raises(ConfigError, match=r"^optimizer \(torch.optim.Adam\) refused its settings: Invalid epsilon"):
        build.check_schedule(cfg, steps_per_epoch=4)


def buggy_schedule(optimizer, lr_min, lr_max, epochs, steps_per_epoch, drop=None, **keys):
    """A schedule of one's own with a bug (the `_target_` of a test): None times an int."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=drop * steps_per_epoch)
