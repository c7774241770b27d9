"""What the documented defaults build: the optimizer, the logit scale, the augmentation options and engines, the
named experiment, the data root, the working folder and the loss."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from resnet9.data import augment
from resnet9.models.resnet9 import ResNet9
from resnet9.training.engine import build
from resnet9.training.engine.loop import train_one_epoch

CONF = Path(__file__).resolve().parents[2] / "conf"
CPU = torch.device("cpu")


def compose_with(*overrides: str, config_name: str = "config", hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)


def test_the_default_optimizer_is_sgd_with_nesterov_momentum_and_weight_decay():
    cfg = compose_with()
    model = ResNet9(width=0.0625)
    optimizer = build.optimizer(cfg.optimizer, model, 0.1)
    (group,) = optimizer.param_groups
    assert type(optimizer) is torch.optim.SGD
    assert group["nesterov"] is True and group["momentum"] == cfg.optimizer.momentum > 0
    assert group["weight_decay"] == cfg.optimizer.weight_decay > 0  # the values themselves: tests/test_docs.py


def test_the_logits_are_the_fc_output_times_logit_scale_and_1_gives_the_raw_output():
    scale = compose_with().model.logit_scale
    torch.manual_seed(0)
    scaled = ResNet9(width=0.0625, logit_scale=scale).eval()
    raw = ResNet9(width=0.0625, logit_scale=1.0).eval()
    raw.load_state_dict(scaled.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        features = torch.flatten(raw.pool(raw.layer3(raw.layer2(raw.layer1(raw.prep(x))))), 1)
        assert torch.equal(raw(x), raw.fc(features))
        torch.testing.assert_close(scaled(x), raw(x) * scale)
    assert scale != 1.0


def white_images(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """White images: any crop or flip of one is the same white image, which normalises to no zero anywhere; a
    Cutout square is what holds zeros (the data set's mean) after normalisation."""
    return np.full((n, 32, 32, 3), 255, dtype=np.uint8), np.arange(n) % 10


@pytest.mark.parametrize("option, holes", [("crop_flip", 0), ("cutout", 1)])
def test_crop_flip_has_no_cutout_where_the_default_has_one_per_image(option, holes):
    spec = instantiate(compose_with(f"augment={option}").augment)
    images, labels = white_images()
    batch, _ = next(iter(spec.train_loader(images, labels, 40, CPU, seed=0)))
    zeros = (batch == 0).all(dim=1).sum(dim=(1, 2))  # pixels zero in every channel, per image
    assert zeros.tolist() == [holes * spec.cutout**2] * 40
    assert (spec.pad, spec.flip) == (4, True)


class Recorded:
    """Stands in for the device engine's loader: what it was asked to do."""

    def __init__(self, *args, **kwargs):
        self.kwargs = kwargs


def test_engine_auto_picks_the_device_engine_and_whole_epoch_auto_is_on_for_cuda_only(monkeypatch):
    spec = instantiate(compose_with().augment)
    assert (spec.engine, spec.whole_epoch) == ("auto", "auto")
    images, labels = white_images()
    assert isinstance(spec.train_loader(images, labels, 40, CPU, seed=0), augment.DeviceLoader)
    assert isinstance(spec.test_loader(images, labels, 40, CPU), augment.DeviceLoader)
    reference = instantiate(compose_with("augment.engine=albumentations").augment)
    assert isinstance(reference.train_loader(images, labels, 40, CPU, seed=0), augment.AlbumentationsLoader)
    monkeypatch.setattr(augment, "DeviceLoader", Recorded)  # a CUDA device is only named here, never used
    asked = {kind: spec.train_loader(images, labels, 40, torch.device(kind), seed=0).kwargs for kind in ("cpu", "cuda")}
    assert asked["cpu"]["whole_epoch"] is False and asked["cuda"]["whole_epoch"] is True


def test_experiment_mission_is_the_defaults_by_name():
    assert (CONF / "experiment" / "mission.yaml").is_file()
    named = OmegaConf.to_container(compose_with("experiment=mission"))
    assert named == OmegaConf.to_container(compose_with())
    assert named != OmegaConf.to_container(compose_with("experiment=page"))  # (an experiment does change things)


@pytest.mark.parametrize("option", ["cifar10", "cifar100"])
def test_resnet9_data_sets_the_data_root_and_data_is_the_default(monkeypatch, tmp_path, option):
    monkeypatch.delenv("RESNET9_DATA", raising=False)
    assert compose_with(f"data={option}").data.root == "data"
    monkeypatch.setenv("RESNET9_DATA", str(tmp_path))
    assert compose_with(f"data={option}").data.root == str(tmp_path)
    assert compose_with(f"data={option}", "data.root=elsewhere").data.root == "elsewhere"  # the key still wins


@pytest.mark.parametrize("command", ["config", "lr_find", "summary", "evaluate"])
def test_no_command_changes_the_working_folder(command):
    """hydra.job.chdir=false: a relative data.root or checkpoint is read from where the command started."""
    assert compose_with(config_name=command, hydra=True).hydra.job.chdir is False


def test_label_smoothing_smooths_the_training_loss():
    cfg = compose_with("label_smoothing=0.2")
    settings = build.step_settings(cfg, CPU)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8)
    with torch.no_grad():
        log_p = F.log_softmax(model(images), dim=1)
    epsilon = cfg.label_smoothing
    smoothed = ((1 - epsilon) * -log_p[torch.arange(8), labels] + epsilon * -log_p.mean(dim=1)).mean()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    sums = train_one_epoch(model, [(images, labels)], optimizer, scheduler, settings)
    assert settings.label_smoothing == 0.2
    assert math.isclose(sums.step_losses[0].item(), smoothed.item(), rel_tol=1e-5)
    assert not math.isclose(smoothed.item(), F.nll_loss(log_p, labels).item(), rel_tol=1e-3)
