"""The training state round-trips: saved mid-epoch and loaded into fresh objects (or a fresh process), training
goes on exactly as if it had never stopped; and today's runs give the numbers recorded before the redesign."""

import errno
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from recorded_runs import assert_as_recorded, recorded_command, same_machine_kind
from test_resume import env, metrics, start_and_wait_for_first_epoch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnet9 import __version__
from resnet9.core.errors import UsageError
from resnet9.data import augment, datasets
from resnet9.training.engine import build
from resnet9.training.engine.loop import EpochSums, StopFlag, StopRequested, train_one_epoch
from resnet9.training.engine.state import CHECKPOINT_FORMAT, RunRecord, TrainState, read_resumable

CPU = torch.device("cpu")


# -- loaders: each engine saves and restores its own place in the epoch -----------------------------------


@pytest.mark.parametrize("engine, workers", [("device", 0), ("albumentations", 0), ("albumentations", 2)])
def test_a_loader_saved_mid_epoch_gives_the_batches_it_would_have_given(engine, workers, tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8), np.arange(120)

    def loader(seed: int):
        return augment.Augmentation(engine=engine).train_loader(images, labels, 20, CPU, seed, num_workers=workers)

    straight = loader(seed=3)
    epochs = [list(straight) for _ in range(3)]
    stopped = loader(seed=3)
    list(stopped)  # epoch 1
    batches = iter(stopped)
    done = [next(batches) for _ in range(2)]  # two steps of epoch 2, then a stop
    torch.save(stopped.state_dict(), tmp_path / "loader.pt")
    del batches

    fresh = loader(seed=99)  # another seed: everything that matters must come from the saved state
    fresh.load_state_dict(torch.load(tmp_path / "loader.pt", weights_only=True))
    resumed = [done + list(fresh), list(fresh)]  # the rest of epoch 2, then epoch 3
    for got, expected in zip(resumed, epochs[1:], strict=True):
        assert len(got) == len(expected) == 6
        for (got_images, got_labels), (images_, labels_) in zip(got, expected, strict=True):
            assert torch.equal(got_images, images_) and torch.equal(got_labels, labels_)


@pytest.mark.parametrize("engine", ["device", "albumentations"])
def test_under_torchrun_every_rank_resumes_its_own_draws_from_rank_0s_saved_state(engine, tmp_path):
    """Only rank 0 writes last.pt; every rank loads it. Each must still go on with the batches it would have had."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8), np.arange(120)

    def loader(rank: int):
        return augment.Augmentation(engine=engine).train_loader(
            images, labels, 20, CPU, seed=3, num_workers=0, rank=rank, world_size=2
        )

    ranks = [loader(0), loader(1)]
    for rank in ranks:
        list(rank)  # epoch 1
    torch.save(ranks[0].state_dict(), tmp_path / "rank0.pt")
    resumed = loader(1)
    resumed.load_state_dict(torch.load(tmp_path / "rank0.pt", weights_only=True))
    expected, got = list(ranks[1]), list(resumed)  # epoch 2, uninterrupted and resumed
    assert len(got) == len(expected) == 6
    for (got_images, got_labels), (images_, labels_) in zip(got, expected, strict=True):
        assert torch.equal(got_images, images_) and torch.equal(got_labels, labels_)


def test_a_torchrun_checkpoint_from_before_the_epoch_seeds_still_resumes():
    images, labels = np.zeros((120, 32, 32, 3), np.uint8), np.arange(120)
    ranks = [
        augment.Augmentation(engine="albumentations").train_loader(
            images, labels, 20, CPU, seed=3, num_workers=0, rank=1, world_size=2
        )
        for _ in range(2)
    ]
    list(ranks[0])
    older = ranks[0].state_dict()
    del older["rng"]["epoch_seeds"]  # as written before the ranks' epoch seeds were saved
    ranks[1].load_state_dict(older)
    assert len(list(ranks[1])) == 6


def test_the_albumentations_engines_worker_count_changes_its_draws_so_a_resume_must_keep_it():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8), np.arange(120)
    first = [
        next(iter(augment.Augmentation(engine="albumentations").train_loader(images, labels, 20, CPU, 3, workers)))
        for workers in (0, 1)
    ]
    assert torch.equal(first[0][1], first[1][1]) and not torch.equal(first[0][0], first[1][0])


@pytest.mark.parametrize(
    "saved, kind, now, device, refused",
    [
        (["device=cuda:0"], "cuda", ["device=cuda:1"], "cuda:1", None),
        (["device=auto"], "cuda", ["device=cuda"], "cuda", None),  # the kind used, not the words for it
        (["device=auto"], "cuda", ["device=auto"], "cpu", "a device of kind 'cuda' there, 'cpu' now"),
        (["device=cpu"], "cpu", ["device=cuda"], "cuda", "a device of kind 'cpu' there, 'cuda' now"),
        (["device=cpu"], None, ["device=cuda"], "cuda", None),  # a checkpoint from before the kind was saved
        (["device=cpu"], torch.zeros(3), ["device=cpu"], "cpu", "a device of kind Tensor there"),  # crafted
        (["data.num_workers=0"], "cpu", ["data.num_workers=4"], "cpu", None),
        (["augment.engine=albumentations", "data.num_workers=0"], "cpu", ["augment.engine=albumentations"], "cpu",
         "data.num_workers=0 there, 2 now"),
        (["progress=false", "data.root=/a"], "cpu", ["progress=true", "data.root=/b"], "cpu", None),
    ],
)  # fmt: skip
def test_a_resume_may_change_only_what_changes_no_number(saved, kind, now, device, refused, tmp_path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        saved_cfg, now_cfg = (compose(config_name="config", overrides=o) for o in (saved, now))
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "version": __version__, "config": OmegaConf.to_container(saved_cfg),
        "lr_min": 0.01, "lr_max": 0.1, "train_state": {"record": {"lr_source": "config"}},
    }  # fmt: skip
    if kind is not None:
        checkpoint["device_type"] = kind
    torch.save(checkpoint, tmp_path / "last.pt")
    if refused is None:
        assert read_resumable(tmp_path / "last.pt", now_cfg, torch.device(device))["lr_max"] == 0.1
    else:
        with pytest.raises(UsageError, match=re.escape(refused)):
            read_resumable(tmp_path / "last.pt", now_cfg, torch.device(device))


def test_an_unreadable_last_pt_is_answered_by_starting_over_not_by_the_same_overrides(tmp_path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config")
    (tmp_path / "last.pt").write_bytes(b"cut short")
    with pytest.raises(UsageError) as err:
        read_resumable(tmp_path / "last.pt", cfg, CPU)
    assert str(err.value) == (
        f"{tmp_path}/last.pt is not a readable checkpoint (UnpicklingError); use a new output folder, or "
        f"resume=false to start over in {tmp_path}"
    )


def test_a_last_pt_the_system_will_not_let_us_read_is_not_called_damaged(tmp_path, monkeypatch):
    """resume=false would delete a checkpoint that may be sound: a permission problem says to fix that instead."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config")
    (tmp_path / "last.pt").write_bytes(b"sound, as far as anyone knows")

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", refused)
    with pytest.raises(UsageError) as err:
        read_resumable(tmp_path / "last.pt", cfg, CPU)
    assert str(err.value) == f"cannot read {tmp_path}/last.pt (Permission denied); make it readable and rerun"


def test_resume_true_demands_a_checkpoint_and_last_pt_must_be_a_file(tmp_path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        demand, auto = (compose(config_name="config", overrides=[f"resume={r}"]) for r in ("true", "auto"))
    assert read_resumable(tmp_path / "last.pt", auto, CPU) is None  # auto: nothing to continue, start over
    with pytest.raises(UsageError, match=r"resume=true but .* holds no last.pt to resume; rerun .*\(hydra.run.dir="):
        read_resumable(tmp_path / "last.pt", demand, CPU)
    (tmp_path / "last.pt").mkdir()  # the run would train, then fail to save its first epoch
    for cfg in (auto, demand):
        with pytest.raises(UsageError, match="last.pt is not a file, so no checkpoint can be written there"):
            read_resumable(tmp_path / "last.pt", cfg, CPU)


class FakeGpus:
    """torch.cuda's random-state functions on a machine with `count` GPUs, as torch's behave there: a device
    index past the last GPU raises IndexError (torch reads `torch.cuda.default_generators[index]`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
        self.count, self.states = count, [torch.full((8,), 10 + i, dtype=torch.uint8) for i in range(count)]
        for module in (torch.cuda, torch.cuda.random):  # torch's *_all functions call the module's own names
            monkeypatch.setattr(module, "get_rng_state", self.get_rng_state)
            monkeypatch.setattr(module, "set_rng_state", self.set_rng_state)
            monkeypatch.setattr(module, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def index(self, device: int | str | torch.device) -> int:
        index = device if isinstance(device, int) else torch.device(device).index
        if (index or 0) >= self.count:
            raise IndexError("tuple index out of range")
        return index or 0

    def get_rng_state(self, device: int | str | torch.device = "cuda") -> torch.Tensor:
        return self.states[self.index(device)].clone()

    def set_rng_state(self, state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        self.states[self.index(device)] = state.clone()


def test_random_states_resume_on_a_machine_with_fewer_gpus(monkeypatch):
    """A checkpoint keeps the training device's CUDA random state only, and a resume sets it on the device that
    trains now, however many GPUs either machine has; older checkpoints (every visible GPU's) still load."""
    from resnet9.training.engine.state import capture_rng, restore_rng

    eight = FakeGpus(monkeypatch, 8)
    saved = capture_rng(torch.device("cuda", 3))  # trained on the fourth of eight GPUs
    assert [state.tolist() for state in saved["cuda"]] == [[13] * 8]
    older = {**saved, "cuda": torch.cuda.get_rng_state_all()}  # what checkpoints held before: all eight

    one = FakeGpus(monkeypatch, 1)
    restore_rng(saved, torch.device("cuda", 0))
    assert one.states[0].tolist() == [13] * 8
    restore_rng(older, torch.device("cuda", 0))  # raised IndexError (set_rng_state_all on 1 GPU)
    assert one.states[0].tolist() == [10] * 8  # the GPU at the resumed device's index
    assert eight.states[3].tolist() == [13] * 8 and torch.equal(torch.get_rng_state(), saved["torch"])
    restore_rng(saved, CPU)  # a CPU run saved no CUDA state and sets none
    assert capture_rng(CPU)["cuda"] == []


# -- the whole training state, through a file, into freshly built objects --------------------------------


# Other options of each group: a user's option must resume exactly too (its optimizer, schedule and pipeline
# states go through the same file).
OTHER_OPTIONS = ["optimizer=adamw", "scheduler=cosine", "scheduler.warmup_epochs=1", "augment=albumentations"]


def small_config(root: Path, engine: str, device: torch.device = CPU):
    options = OTHER_OPTIONS if engine == "other options" else [f"augment.engine={engine}", "scheduler.peak_epoch=1"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[f"data.root={root}", "data.limit_train=200", "data.limit_test=100", "batch_size=40",
                       "model.width=0.125", "epochs=3", *options, "data.num_workers=0", f"device={device.type}"],
        )  # fmt: skip


def new_state(cfg, data_set: datasets.ImageData, init_seed: int) -> TrainState:
    """The trainer's state for `cfg` (on its device; fused SGD on CUDA, as the trainer picks it)."""
    on = build.device(cfg.device)
    settings = build.step_settings(cfg, on)
    build.seed_everything(init_seed)
    model = build.model(cfg.model, settings)
    loader = build.train_loader(cfg, data_set, settings, cfg.seed)
    optimizer = build.optimizer(cfg.optimizer, model, lr=0.05, **build.fused_kernels(cfg.optimizer, on))
    scheduler = build.scheduler(cfg, optimizer, 0.005, 0.05, len(loader))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    record = RunRecord(lr_min=0.005, lr_max=0.05, lr_source="config", steps_per_epoch=len(loader))
    return TrainState(model, optimizer, scheduler, ema, loader, record, ema_start_epoch=2)


def train_epoch(state: TrainState, epoch: int, stop_after: int | None = None, graph_step=None) -> list[float]:
    """The trainer's epoch: the state's own progress, loader, EMA; a stop raised after `stop_after` steps;
    `graph_step` as the trainer passes a captured step."""
    stop = StopFlag()

    def batches():
        for handed_out, batch in enumerate(state.loader, start=1):
            if handed_out == stop_after:
                stop.signal = signal.SIGTERM  # the loop stops after this step
            yield batch

    on = state.device()
    settings = build.step_settings(small_config(Path("."), "device", on), on)
    state.epoch_sums = state.epoch_sums or EpochSums.start(on)
    first_step = (epoch - 1) * len(state.loader)
    train_one_epoch(state.model, batches(), state.optimizer, state.scheduler, settings, state.epoch_sums, first_step,
                    ema=state.averaging(epoch), stop=stop, graph_step=graph_step)  # fmt: skip
    result = state.epoch_sums.read(first_step)
    state.epoch, state.epoch_sums = epoch, None
    return [result.loss, result.accuracy, *result.step_losses]


@pytest.mark.parametrize("engine", ["device", "albumentations", "other options"])
def test_the_state_saved_mid_epoch_and_loaded_into_new_objects_continues_exactly(synthetic_root, tmp_path, engine):
    cfg = small_config(synthetic_root, engine)
    data_set = build.dataset(cfg.data)
    straight = new_state(cfg, data_set, init_seed=0)
    expected = [train_epoch(straight, epoch) for epoch in (1, 2, 3)]

    stopped = new_state(cfg, data_set, init_seed=0)
    train_epoch(stopped, 1)
    with pytest.raises(StopRequested):
        train_epoch(stopped, 2, stop_after=3)
    torch.save(stopped.state_dict(), tmp_path / "state.pt")
    saved_rng = torch.get_rng_state()

    torch.manual_seed(12345)  # a fresh state, other weights and random numbers: the file must restore them all
    fresh = new_state(cfg, data_set, init_seed=7)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert torch.equal(torch.get_rng_state(), saved_rng)
    assert (fresh.epoch, len(fresh.epoch_sums.lrs)) == (1, 3)
    assert [train_epoch(fresh, 2), train_epoch(fresh, 3)] == expected[1:]
    for name, value in straight.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[name], value), name
    for name, value in straight.ema.state_dict().items():
        assert torch.equal(fresh.ema.state_dict()[name], value), name
    assert fresh.scheduler.state_dict() == straight.scheduler.state_dict()


# -- the real command, in fresh processes, against the numbers recorded before the redesign ---------------


@same_machine_kind
def test_a_run_with_derived_lrs_gives_the_recorded_numbers(synthetic_root, tmp_path):
    out = tmp_path / "run"
    run_env = {**env(), "RESNET9_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(recorded_command(synthetic_root, "derived_lrs", out), cwd=REPO, env=run_env,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert metrics(out)["lr_source"] == "range test"
    assert_as_recorded(metrics(out), "derived_lrs")


@same_machine_kind
def test_albumentations_engine_stopped_mid_epoch_resumes_to_the_recorded_numbers(synthetic_root, tmp_path):
    out = tmp_path / "run"
    command = recorded_command(synthetic_root, "albumentations_engine", out)
    process = start_and_wait_for_first_epoch(synthetic_root, out, command)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    stopped = metrics(out)
    assert stopped["status"] == "interrupted" and len(stopped["epochs"]) == 1

    result = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = metrics(out)
    assert resumed["resumed_from_step"] > resumed["steps_per_epoch"]  # it went on from inside epoch 2
    assert_as_recorded(resumed, "albumentations_engine")


def test_the_background_writer_keeps_order_copies_what_it_writes_and_stops_after_a_failure(tmp_path):
    from resnet9.core import files

    writer = files.BackgroundWriter()
    weights = {"w": torch.zeros(3)}
    writer.submit(files.save_torch, tmp_path / "last.pt", files.host_copy(weights))
    weights["w"] += 1  # training goes on changing the originals while the copy is written
    writer.submit(files.write_json, tmp_path / "metrics.json", {"epochs": [1]})
    writer.wait()
    assert torch.equal(torch.load(tmp_path / "last.pt", weights_only=True)["w"], torch.zeros(3))
    (tmp_path / "blocked.pt").mkdir()  # a write that fails (a folder in the way), then one that must not happen
    writer.submit(files.save_torch, tmp_path / "blocked.pt", files.host_copy(weights))
    writer.submit(files.write_json, tmp_path / "metrics.json", {"epochs": [1, 2]})
    with pytest.raises(UsageError, match="cannot write .*blocked.pt"):
        writer.wait()
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"epochs": [1]}  # never ahead of the checkpoint


def storages(obj) -> dict[tuple[str, int], int]:
    """The distinct storages the tensors of a nested checkpoint use: (device, address) -> bytes."""
    if isinstance(obj, torch.Tensor):
        return {(str(obj.device), obj.untyped_storage().data_ptr()): obj.untyped_storage().nbytes()}
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list | tuple) else []
    return {key: size for value in values for key, size in storages(value).items()}


def test_the_background_copy_of_a_checkpoint_copies_each_storage_once(synthetic_root, tmp_path):
    """The evaluated model, the training state's model and the EMA share their tensors in a checkpoint, and
    torch.save writes each storage once: the host copy must share them the same way, not hold each again."""
    from resnet9.core import files

    cfg = small_config(synthetic_root, "device")
    state = new_state(cfg, build.dataset(cfg.data), init_seed=0)
    for epoch in (1, 2):  # epoch 2 updates the EMA, which the checkpoint then evaluates
        train_epoch(state, epoch)
    checkpoint = state.checkpoint(OmegaConf.to_container(cfg))
    copy = files.host_copy(checkpoint)
    assert sum(storages(copy).values()) == sum(storages(checkpoint).values())
    assert not storages(copy).keys() & storages(checkpoint).keys()  # copies, not the originals
    torch.save(copy, tmp_path / "copy.pt")
    reread = torch.load(tmp_path / "copy.pt", weights_only=True)  # the file holds each storage once, like the state
    assert sum(storages(reread).values()) == sum(storages(checkpoint).values())
    for part in ("model", "ema"):
        for name, value in checkpoint["train_state"][part].items():
            assert torch.equal(reread["train_state"][part][name], value), name
            assert reread["train_state"][part][name].stride() == value.stride(), name
    next(iter(state.model.parameters())).data.add_(1)  # training goes on: the copy keeps the epoch's weights
    assert torch.equal(
        next(iter(copy["train_state"]["model"].values())), reread["train_state"]["model"]["prep.0.weight"]
    )


@pytest.mark.parametrize("answer, written", [(errno.EINVAL, True), (errno.EIO, False)])
def test_a_file_system_that_cannot_fsync_still_gets_its_files_but_a_failing_disk_stops_the_run(
    tmp_path, monkeypatch, answer, written
):
    from resnet9.core import files

    def fsync(fd: int) -> None:
        raise OSError(answer, os.strerror(answer))

    monkeypatch.setattr(files.os, "fsync", fsync)
    if written:  # (some FUSE, 9p and SMB mounts answer EINVAL: nothing we can do, nor need to)
        files.write_json(tmp_path / "metrics.json", {"epochs": [1]})
        assert json.loads((tmp_path / "metrics.json").read_text()) == {"epochs": [1]}
    else:
        with pytest.raises(UsageError, match="cannot write .*metrics.json"):
            files.write_json(tmp_path / "metrics.json", {"epochs": [1]})
        assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_a_stop_after_a_divergence_keeps_the_last_good_checkpoint(synthetic_root, tmp_path):
    from resnet9.core import files
    from resnet9.training.recording.listeners import CheckpointWriter

    cfg = small_config(synthetic_root, "device")
    state = new_state(cfg, build.dataset(cfg.data), init_seed=0)
    train_epoch(state, 1)
    last = tmp_path / "last.pt"
    files.save_torch(last, state.checkpoint({}))
    writer = CheckpointWriter(last, {}, files.BackgroundWriter())
    with pytest.raises(StopRequested):
        train_epoch(state, 2, stop_after=2)
    writer.on_stop(state)  # a healthy stop: saved at its step
    checkpoint = torch.load(last, weights_only=True)
    saved = checkpoint["train_state"]
    assert len(saved["progress"]["lrs"]) == 2 and checkpoint["device_type"] == "cpu"  # what a resume must match

    state.epoch_sums.step_losses[-1] = torch.tensor(float("nan"))  # the epoch's last step diverged
    writer.on_stop(state)
    kept = torch.load(last, weights_only=True)["train_state"]["progress"]["step_losses"]
    assert torch.equal(kept, saved["progress"]["step_losses"]) and kept.isfinite().all()
    state.epoch_sums.step_losses[-1] = torch.tensor(1.0)
    with torch.no_grad():
        next(state.model.parameters())[0] = float("inf")  # or the weights did
    writer.on_stop(state)
    for name, value in torch.load(last, weights_only=True)["train_state"]["model"].items():
        assert torch.equal(value, saved["model"][name]), name


def test_a_run_that_starts_over_removes_the_earlier_runs_checkpoint_and_a_resumed_one_keeps_it(tmp_path):
    """resume=false: a plain rerun must not find the earlier run's last.pt should this run end before its own."""
    from resnet9.core import files
    from resnet9.training.recording.listeners import CheckpointWriter

    last = tmp_path / "last.pt"
    writer = CheckpointWriter(last, {}, files.BackgroundWriter())
    for resumed, kept in ((True, True), (False, False)):
        torch.save({"earlier": 1}, last)
        record = RunRecord(lr_min=0.005, lr_max=0.05, lr_source="config")
        if resumed:
            record.update(resumed_from_epoch=2)
        writer.on_run_start(TrainState(None, None, None, None, None, record))
        assert last.exists() == kept
