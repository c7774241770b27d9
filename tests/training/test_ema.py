"""ema.decay > 0: the trainer's EMA is torch's AveragedModel, update for update, without reading the device."""

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnet9.models.resnet9 import ResNet9
from resnet9.training.engine.ema import WeightEMA


def steps(model, optimizer, count):
    generator = torch.Generator().manual_seed(1)
    for _ in range(count):
        images, labels = torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        yield


def test_the_ema_equals_torchs_averaged_model_weights_statistics_and_state():
    torch.manual_seed(0)
    model = ResNet9(width=0.125)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ours = WeightEMA(model, decay=0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for _ in steps(model, optimizer, 4):
        ours.update_parameters(model)
        reference.update_parameters(model)
    mine, theirs = ours.state_dict(), reference.state_dict()
    assert mine.keys() == theirs.keys() and int(mine["n_averaged"]) == 4 and ours.updates == 4
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key  # bit for bit, BatchNorm statistics and counts included
    assert not torch.equal(mine["module.prep.0.weight"], model.state_dict()["prep.0.weight"])  # an average


def test_an_update_reads_nothing_back_and_a_loaded_ema_knows_its_count(monkeypatch):
    torch.manual_seed(0)
    model = ResNet9(width=0.125)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = WeightEMA(model, decay=0.9)
    reads = []
    for name in ("__bool__", "item", "__int__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _real=real, _n=name: reads.append(_n) or _real(self, *a)
        )
    for _ in steps(model, optimizer, 3):
        ema.update_parameters(model)
    monkeypatch.undo()
    assert reads == []  # torch's AveragedModel reads its count twice per update
    again = WeightEMA(model, decay=0.9)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 3
