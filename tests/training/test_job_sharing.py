"""Jobs of a sweep in one process share what does not change between them (resnet9/core/jobcache.py): the images
the device engine put on the device, and the model summary."""

import types
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from resnet9.analysis import model_table
from resnet9.core import jobcache
from resnet9.models.resnet9 import ResNet9, count_parameters
from resnet9.training.engine import build
from resnet9.training.engine.state import RunRecord
from resnet9.training.recording.listeners import SummaryAndCurves

CONF = Path(__file__).resolve().parents[2] / "conf"


def job_config(synthetic_root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[
            f"data.root={synthetic_root}", "data.limit_train=400", "data.limit_test=300", "batch_size=40",
            "model.width=0.0625", "device=cpu", *overrides,
        ])  # fmt: skip


def test_a_later_job_reuses_the_device_copy_of_the_images(synthetic_root):
    loaders = []
    for seed in (0, 1):  # two jobs of a seed sweep
        cfg = job_config(synthetic_root, f"seed={seed}")
        settings = build.step_settings(cfg, torch.device("cpu"))
        images = build.dataset(cfg.data)
        loaders.append((build.train_loader(cfg, images, settings, cfg.seed), build.test_loader(cfg, images, settings)))
    (train_a, test_a), (train_b, test_b) = loaders
    assert train_b.images is train_a.images and test_b.images is test_a.images  # the same tensors, not copies
    assert train_a.images.shape == (400, 3, 40, 40)  # (held padded, once)
    assert not torch.equal(next(iter(train_a))[0], next(iter(train_b))[0])  # each job still draws its own batches
    other = job_config(synthetic_root, "augment=none")  # a job the copy was not made for gets its own
    images = build.dataset(other.data)
    assert build.train_loader(other, images, build.step_settings(other, torch.device("cpu")), 0).images is not (
        train_a.images
    )


def test_a_later_job_reuses_the_model_summary(tmp_path, monkeypatch):
    jobcache.shared.clear()
    described = []
    real = model_table.describe
    monkeypatch.setattr(model_table, "describe", lambda *args, **kwargs: described.append(1) or real(*args, **kwargs))
    model_cfg = OmegaConf.to_container(job_config(Path("unused")).model, resolve=False)
    model_cfg["num_classes"] = 10
    model = ResNet9(width=0.0625)
    for job in ("0", "1"):
        (tmp_path / job).mkdir()
        SummaryAndCurves(tmp_path / job, model_cfg).on_run_start(types.SimpleNamespace(model=model, record=RunRecord()))
    assert described == [1]  # made once, for the first job
    assert (tmp_path / "1" / "model_summary.txt").read_text() == (tmp_path / "0" / "model_summary.txt").read_text()
    assert f"{count_parameters(model):,}" in (tmp_path / "1" / "model_summary.txt").read_text()
