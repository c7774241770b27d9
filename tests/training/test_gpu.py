"""What only a GPU shows: the CUDA paths of fp16 loss scaling, the device augmentation's CUDA generator, resume,
a reused model, the background writer and the captured step, each where CPU tests cannot reach.

Every test here carries the `gpu` marker and skips without CUDA; `benchmarks/device_check.sh` runs them (its
gpu-tests stage: `pytest -m gpu`). `RESNET9_GPU_TESTS_ON=cpu` runs them on the CPU instead, to try the tests
themselves where no GPU is at hand (CUDA-only features then take their CPU fallback, and the tests say which).
"""

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_state import new_state, small_config, storages, train_epoch

from resnet9.core import files, jobcache
from resnet9.data import augment
from resnet9.train import train
from resnet9.training.engine import build, cuda_graph
from resnet9.training.engine.loop import StepSettings, StopRequested, train_one_epoch

ON = torch.device(os.environ.get("RESNET9_GPU_TESTS_ON", "cuda"))
CUDA = ON.type == "cuda"
CONF = Path(__file__).resolve().parents[2] / "conf"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(CUDA and not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # torch: step 0 skipped
@pytest.mark.parametrize("first_scale", [2.0**16, 2.0**100], ids=["torch-default", "overflow-on-step-0"])
def test_fp16_with_a_grad_scaler_and_fused_sgd_steps_like_unfused_sgd(monkeypatch, synthetic_root, first_scale):
    """fp16 autocast, a GradScaler and the fused SGD the trainer picks on CUDA, over five steps, against the
    unfused SGD: the same losses and weights, all finite, also when step 0 overflows (uninitialised memory shows
    as NaN here)."""
    monkeypatch.setattr(torch, "empty_like", lambda tensor, *args, **kwargs: torch.full_like(tensor, math.nan))
    cfg = small_config(synthetic_root, "device", ON)
    settings = StepSettings(device=ON, memory_format=torch.channels_last, autocast_dtype=torch.float16)
    generator = torch.Generator(device=ON).manual_seed(0)
    batches = [(torch.randn(40, 3, 32, 32, device=ON, generator=generator),
                torch.randint(0, 10, (40,), device=ON, generator=generator)) for _ in range(5)]  # fmt: skip
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build.model(cfg.model, settings)
        optimizer = build.optimizer(cfg.optimizer, model, lr=0.05, fused=fused)
        scaler = torch.amp.GradScaler(ON.type, init_scale=first_scale, backoff_factor=min(0.5, 2.0**16 / first_scale))
        build.ready_for_loss_scaling(optimizer)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        progress = train_one_epoch(model, batches, optimizer, scheduler, settings, scaler=scaler)
        results.append((torch.stack(progress.step_losses).float(), [p.detach().clone() for p in model.parameters()]))
    (losses, weights), (fused_losses, fused_weights) = results
    assert torch.isfinite(fused_losses).all() and all(torch.isfinite(w).all() for w in fused_weights)
    torch.testing.assert_close(fused_losses, losses, rtol=1e-3, atol=1e-4)
    for mine, theirs in zip(fused_weights, weights, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-4)


def test_a_whole_epoch_at_once_gives_the_batch_by_batch_batches_with_a_cuda_generator():
    """As the CPU test in test_augment.py, with the loader's generator and draws on the GPU."""
    rng = np.random.default_rng(4)
    images, labels = rng.integers(0, 256, (230, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 230)

    def loader(whole_epoch: bool) -> augment.DeviceLoader:
        return augment.DeviceLoader(images, labels, 50, ON, train=True, pad=4, flip=True, cutout=8, seed=7,
                                    memory_format=torch.channels_last, whole_epoch=whole_epoch)  # fmt: skip

    batch_by_batch, at_once = loader(False), loader(True)
    assert batch_by_batch.generator.device.type == ON.type
    for _ in range(2):
        for (images_a, labels_a), (images_b, labels_b) in zip(batch_by_batch, at_once, strict=True):
            assert images_a.device.type == ON.type
            assert torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)
    resumed, reference = loader(True), loader(False)
    for half_way in (resumed, reference):
        half_way.load_state_dict({**batch_by_batch.state_dict(), "batches_done": 2})
    for (images_a, _), (images_b, _) in zip(reference, resumed, strict=True):
        assert torch.equal(images_a, images_b)


def test_resume_on_the_gpu_restores_the_loader_and_random_states_and_a_capture_after_the_load_goes_on(
    synthetic_root, tmp_path
):
    """Stopped in epoch 2, saved, loaded into fresh objects: the same CUDA random state and next batches, and
    training goes on, eagerly and through a step captured after the load, like the run that never stopped."""
    cfg = small_config(synthetic_root, "device", ON)
    data_set = build.dataset(cfg.data)
    straight = new_state(cfg, data_set, init_seed=0)
    expected = [train_epoch(straight, epoch) for epoch in (1, 2, 3)]
    stopped = new_state(cfg, data_set, init_seed=0)
    train_epoch(stopped, 1)
    with pytest.raises(StopRequested):
        train_epoch(stopped, 2, stop_after=2)
    torch.save(files.host_copy(stopped.state_dict()), tmp_path / "state.pt")  # as the trainer's writer does
    reference = new_state(cfg, data_set, init_seed=0).loader  # the batch the stopped run would have trained on next
    list(reference)  # epoch 1
    next_batch = [images for images, _ in reference][2]  # epoch 2's third batch (two were done before the stop)
    cuda_state = torch.cuda.get_rng_state(ON) if CUDA else torch.get_rng_state()
    torch.manual_seed(12345)  # other weights and random numbers: the file must restore them all
    for graph in (False, True):
        saved = torch.load(tmp_path / "state.pt", weights_only=True)  # each time: a loaded state trains its tensors
        fresh_loader = new_state(cfg, data_set, init_seed=7).loader
        fresh_loader.load_state_dict(saved["loader"])
        assert torch.equal(next(iter(fresh_loader))[0], next_batch)
        fresh = new_state(cfg, data_set, init_seed=7)
        fresh.load_state_dict(saved)
        assert torch.equal(torch.cuda.get_rng_state(ON) if CUDA else torch.get_rng_state(), cuda_state)
        settings = build.step_settings(cfg, ON)
        step = cuda_graph.capture_step(fresh.model, fresh.optimizer, settings, cfg.batch_size) if graph else None
        assert (step is not None) == (graph and CUDA)
        rest = [*train_epoch(fresh, 2, graph_step=step), *train_epoch(fresh, 3, graph_step=step)]
        # bf16 on a GPU, with cuDNN free to pick other kernels in another run: close, not bit for bit
        assert rest == pytest.approx([*expected[1], *expected[2]], rel=1e-2, abs=1e-3)


def test_a_reused_model_starts_from_the_weights_a_new_one_gets(monkeypatch):
    """compile=true sweeps reuse the network (and its compiled form) across jobs: on the GPU too, job 2 must start
    from the weights and BatchNorm statistics that job 2 alone would get."""
    settings = StepSettings(device=ON, memory_format=torch.channels_last)
    model_cfg = {"_target_": "resnet9.models.resnet9.ResNet9", "num_classes": 10, "width": 0.125, "logit_scale": 0.125}
    jobcache.shared.clear()
    first = build.model(model_cfg, settings, reuse=True)
    wrapper = build.compiled(first)
    first.train()
    first(torch.randn(8, 3, 32, 32, device=ON)).sum().backward()  # job 1 trains it (BatchNorm statistics too)
    with torch.no_grad():
        for parameter in first.parameters():
            parameter.add_(parameter.grad)
    for seed in (3, 4):
        torch.manual_seed(seed)
        fresh = build.model(model_cfg, settings)
        torch.manual_seed(seed)
        again = build.model(model_cfg, settings, reuse=True)
        assert again is first and build.compiled(again) is wrapper
        for name, value in fresh.state_dict().items():
            assert torch.equal(again.state_dict()[name], value), (seed, name)
    jobcache.shared.clear()


def test_the_background_writer_saves_a_gpu_checkpoint_as_it_was(synthetic_root, tmp_path):
    """A checkpoint of CUDA tensors, copied to the host once per storage and written on the writer's thread while
    training goes on changing the originals: the file holds the epoch's values, each storage once."""
    cfg = small_config(synthetic_root, "device", ON)
    state = new_state(cfg, build.dataset(cfg.data), init_seed=0)
    for epoch in (1, 2):  # epoch 2 updates the EMA: the checkpoint evaluates it
        train_epoch(state, epoch)
    checkpoint = state.checkpoint(OmegaConf.to_container(cfg))
    expected = {name: value.detach().cpu().clone() for name, value in checkpoint["train_state"]["model"].items()}
    writer = files.BackgroundWriter()
    writer.submit(files.save_torch, tmp_path / "last.pt", files.host_copy(checkpoint))
    train_epoch(state, 3)  # changes the originals on the GPU while the copy is written
    writer.wait()
    writer.close()
    reread = torch.load(tmp_path / "last.pt", weights_only=True)
    assert sum(storages(reread).values()) == sum(storages(checkpoint).values())
    for name, value in expected.items():
        assert torch.equal(reread["train_state"]["model"][name], value), name
    assert not torch.equal(state.model.state_dict()["prep.0.weight"].cpu(), expected["prep.0.weight"])


def test_a_short_run_with_cuda_graph_checkpoints_and_resumes(monkeypatch, synthetic_root, tmp_path):
    """cuda_graph=true end to end: a run stopped by SIGTERM in epoch 2 saves last.pt at that step; rerun, it
    resumes (capturing its step again, after the load) and ends like the run that never stopped."""
    overrides = [
        f"data.root={synthetic_root}", "data.limit_train=1000", "data.limit_test=200", "batch_size=40",
        "model.width=0.125", "epochs=3", "scheduler.peak_epoch=1", "optimizer.lr=0.05", "scheduler.lr_min=0.005",
        "ema.decay=0.9", "ema.start_epoch=2", "logger=none", "progress=false", f"device={ON.type}",
        "cuda_graph=true",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    for folder in ("straight", "stopped"):
        (tmp_path / folder).mkdir()
    train(cfg, tmp_path / "straight")
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())

    steps = {"done": 0}
    real_train_one_epoch = train_one_epoch

    def stopping_after_30_steps(model, batches, *args, **kwargs):
        def counted():
            for batch in batches:
                steps["done"] += 1
                if steps["done"] == 30:  # step 30 of 75: in epoch 2 (25 steps an epoch)
                    signal.raise_signal(signal.SIGTERM)  # the run's handler only sets its stop flag
                yield batch

        return real_train_one_epoch(model, counted(), *args, **kwargs)

    monkeypatch.setattr("resnet9.train.train_one_epoch", stopping_after_30_steps)
    with pytest.raises(StopRequested):
        train(cfg, tmp_path / "stopped")
    monkeypatch.setattr("resnet9.train.train_one_epoch", real_train_one_epoch)
    train(cfg, tmp_path / "stopped")
    resumed = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    assert resumed["status"] == straight["status"] == "completed"
    assert resumed["cuda_graph"] is straight["cuda_graph"] is CUDA
    assert resumed["resumed_from_step"] == 30 and resumed["resumed_from_epoch"] == 2
    assert resumed["lr_per_step"] == straight["lr_per_step"]  # the schedule went on at the very step
    for mine, theirs in zip(resumed["epochs"], straight["epochs"], strict=True):
        for key in ("train_loss", "test_loss"):  # bf16, cuDNN's choice of kernels per run: close
            assert mine[key] == pytest.approx(theirs[key], rel=1e-2, abs=1e-3), (mine["epoch"], key)
    assert resumed["final_test_acc"] == pytest.approx(straight["final_test_acc"], abs=0.03)
