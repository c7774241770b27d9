"""cuda_graph=true: the captured training step. What it rests on is checked on the CPU (zero momentum buffers are
SGD's first step, the LR read from a device tensor is the LR, the warm-up is undone in the same tensors, the
fallback says why); the capture itself, and that it steps exactly like the eager step, on a GPU only."""

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from resnet9.models.resnet9 import ResNet9
from resnet9.train import train
from resnet9.training.engine import cuda_graph
from resnet9.training.engine.loop import StepSettings, _train_step

CONF = Path(__file__).resolve().parents[2] / "conf"
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA graph needs a CUDA device")


def tiny(device=CPU, **sgd):
    torch.manual_seed(0)
    model = ResNet9(width=0.125).to(device)
    options = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, **sgd}
    images, labels = torch.randn(8, 3, 32, 32, device=device), torch.randint(0, 10, (8,), device=device)
    return model, torch.optim.SGD(model.parameters(), **options), images, labels


def sgd_step(model, optimizer, images, labels):
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_zero_momentum_buffers_are_exactly_sgds_first_step(foreach):
    model, optimizer, images, labels = tiny(foreach=foreach)
    other = copy.deepcopy(model)
    other_optimizer = torch.optim.SGD(other.parameters(), **{k: v for k, v in optimizer.defaults.items()})
    cuda_graph.start_momentum(other_optimizer)
    assert all("momentum_buffer" in other_optimizer.state[p] for p in other.parameters())
    for _ in range(2):
        sgd_step(model, optimizer, images, labels)
        sgd_step(other, other_optimizer, images, labels)
    for mine, theirs in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)  # bit for bit, not approximately


def test_the_lr_read_from_a_tensor_is_the_schedules_and_the_numbers_come_back():
    model, optimizer, images, labels = tiny()
    other, other_optimizer = copy.deepcopy(model), copy.deepcopy(optimizer)
    other_optimizer.param_groups[0]["params"] = list(other.parameters())
    other_optimizer.state.clear()
    sgd_step(model, optimizer, images, labels)
    lr = torch.tensor(0.1)
    with cuda_graph.lrs_on_device(other_optimizer, [lr]):
        assert other_optimizer.param_groups[0]["lr"] is lr
        sgd_step(other, other_optimizer, images, labels)
    assert other_optimizer.param_groups[0]["lr"] == 0.1 and isinstance(other_optimizer.param_groups[0]["lr"], float)
    for mine, theirs in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_the_warm_up_is_undone_in_the_same_tensors():
    model, optimizer, images, labels = tiny()
    cuda_graph.start_momentum(optimizer)
    sgd_step(model, optimizer, images, labels)  # momentum buffers that are not zero
    tensors = {**model.state_dict(), **{str(i): s["momentum_buffer"] for i, s in enumerate(optimizer.state.values())}}
    before = {key: (value.data_ptr(), value.clone()) for key, value in tensors.items()}
    random_before = torch.rand(1)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with cuda_graph.untouched_in_place(model, optimizer):
        for _ in range(2):
            sgd_step(model, optimizer, images + torch.randn_like(images), labels)
    assert torch.equal(torch.get_rng_state(), state) and not torch.equal(torch.rand(1), random_before)
    after = {**model.state_dict(), **{str(i): s["momentum_buffer"] for i, s in enumerate(optimizer.state.values())}}
    assert after.keys() == before.keys()
    for key, (pointer, value) in before.items():
        assert after[key].data_ptr() == pointer and torch.equal(after[key], value), key
    assert all(p.grad is None for p in model.parameters())


def test_where_a_step_cannot_be_captured_the_reason_is_named():
    model, optimizer, _, _ = tiny(fused=True)
    cuda, cpu = StepSettings(device=CUDA), StepSettings(device=CPU)
    assert cuda_graph.why_not_captured(optimizer, cuda, scaler=None, parallel=False) is None
    assert "needs a CUDA device" in cuda_graph.why_not_captured(optimizer, cpu, None, False)
    adam = torch.optim.Adam(model.parameters())
    assert "not Adam" in cuda_graph.why_not_captured(adam, cuda, None, False)
    unfused = tiny()[1]
    assert "fused SGD" in cuda_graph.why_not_captured(unfused, cuda, None, False)
    damped = tiny(fused=True, nesterov=False, dampening=0.1)[1]
    assert "dampening" in cuda_graph.why_not_captured(damped, cuda, None, False)
    assert "loss scaling" in cuda_graph.why_not_captured(optimizer, cuda, torch.amp.GradScaler("cpu"), False)
    assert "torchrun" in cuda_graph.why_not_captured(optimizer, cuda, None, parallel=True)
    assert "cycle_momentum" in cuda_graph.why_not_captured(optimizer, cuda, None, False, cycles_momentum=True)


def test_cuda_graph_on_a_cpu_says_why_and_trains_eagerly(synthetic_root, tmp_path, caplog):
    overrides = [
        f"data.root={synthetic_root}", "data.limit_train=200", "data.limit_test=100", "batch_size=40",
        "model.width=0.125", "epochs=2", "scheduler.peak_epoch=1", "optimizer.lr=0.1", "scheduler.lr_min=0.01",
        "logger=none", "progress=false", "device=cpu", "checkpoint=false",
    ]  # fmt: skip
    results = {}
    for graph in (False, True):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*overrides, f"cuda_graph={graph}"])
        (tmp_path / str(graph)).mkdir()
        with caplog.at_level(logging.WARNING, logger="resnet9"):
            train(cfg, tmp_path / str(graph))
        results[graph] = json.loads((tmp_path / str(graph) / "metrics.json").read_text())
    assert "cuda_graph=true: a CUDA graph needs a CUDA device, this run is on cpu; training steps run eagerly" in (
        caplog.text
    )
    assert results[True]["cuda_graph"] is False and "cuda_graph" not in results[False]
    assert results[True]["final_test_acc"] == results[False]["final_test_acc"]  # the same eager steps


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_the_captured_step_steps_like_the_eager_step(precision):
    """Three steps at three LRs from the same weights: the same losses, weights and BatchNorm statistics as the
    eager step, also when the model comes to the capture in eval mode (as after the trainer's warm-up)."""
    settings = StepSettings(device=CUDA, memory_format=torch.channels_last, autocast_dtype=precision)
    results = []
    for graph in (False, True):
        model, optimizer, _, _ = tiny(CUDA, fused=True)
        model = model.to(memory_format=torch.channels_last)
        if graph:
            model.eval()  # the warm-up's evaluation leaves it so; the capture must train BatchNorm all the same
        step = cuda_graph.CapturedStep(model, optimizer, settings, batch=8) if graph else None
        generator = torch.Generator(device=CUDA).manual_seed(1)
        losses = []
        for lr in (0.05, 0.1, 0.2):
            optimizer.param_groups[0]["lr"] = lr
            images = torch.randn(8, 3, 32, 32, device=CUDA, generator=generator)
            labels = torch.randint(0, 10, (8,), device=CUDA, generator=generator)
            if step is None:
                _, loss = _train_step(model, images, labels, optimizer, settings, scaler=None)
            else:
                _, loss = step(images, labels)
            losses.append(loss.item())
        results.append((losses, [t.detach().clone() for t in model.state_dict().values()]))
    (eager_losses, eager_weights), (graph_losses, graph_weights) = results
    assert graph_losses == pytest.approx(eager_losses, rel=1e-3, abs=1e-4)
    for eager, graph in zip(eager_weights, graph_weights, strict=True):
        torch.testing.assert_close(graph, eager, rtol=1e-3, atol=1e-4)
