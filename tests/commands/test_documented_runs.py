"""What a finished run (conftest's `trained_run`) and the commands after it do that the docs promise: no W&B files
with logger=none, no warm-up on a CPU, a rerun of a completed run, predict's and evaluate's defaults, GradCAM's
layer, and what cuda_graph and the EMA do with what they are given."""

import importlib.util
import json
import os
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

import resnet9.train as trainer
from resnet9 import predict
from resnet9.analysis import gradcam
from resnet9.core.errors import UsageError
from resnet9.evaluate import evaluate_checkpoint
from resnet9.models.resnet9 import ResNet9
from resnet9.training.engine import build
from resnet9.training.engine import epoch as engine_epoch
from resnet9.training.engine.ema import WeightEMA
from resnet9.training.engine.state import RunRecord

CONF = REPO / "conf"


def compose_with(*overrides: str, config_name: str = "config", hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_logger_none_writes_no_wandb_files(trained_run):
    record = metrics(trained_run)
    assert record["status"] == "completed" and record["config"]["logger"]["_target_"].endswith("NullTracker")
    assert (trained_run / "last.pt").is_file()  # the run wrote its files...
    assert not [path for path in trained_run.rglob("*") if "wandb" in path.name.lower()]  # ...and none of W&B's


def test_warmup_auto_takes_no_warm_up_step_on_a_cpu(trained_run):
    record = metrics(trained_run)
    assert record["config"]["warmup"] == "auto" and record["device"] == "cpu"
    assert record["timings"]["warmup_s"] == 0 and record["timings"]["train_s"] > 0


def test_a_completed_run_rerun_in_its_folder_finishes_at_once(trained_run, tmp_path, monkeypatch):
    """What a resumed sweep does with its completed jobs: no epoch trained or evaluated again."""
    folder = tmp_path / "run"
    shutil.copytree(trained_run, folder)
    before = metrics(folder)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a completed run trained or evaluated again")

    monkeypatch.setattr(engine_epoch, "train_one_epoch", must_not_run)
    monkeypatch.setattr(engine_epoch, "evaluate", must_not_run)
    assert trainer.train(OmegaConf.create(before["config"]), folder) == before["final_test_acc"]
    after = metrics(folder)
    assert after["status"] == "completed" and after["epochs"] == before["epochs"]


def test_predict_without_a_checkpoint_takes_the_newest_last_pt_under_outputs(
    trained_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    older, newer = tmp_path / "outputs/2026-01-02/09-00-00", tmp_path / "outputs/2026-01-01/09-00-00"
    for folder in (older, newer):
        folder.mkdir(parents=True)
    (older / "last.pt").write_bytes(b"an older run's damaged checkpoint: never read")
    shutil.copy(trained_run / "last.pt", newer / "last.pt")
    os.utime(older / "last.pt", (1_000_000, 1_000_000))  # newest by time, not by name
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(tmp_path / "grey.png")
    assert predict.main(["grey.png", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "checkpoint: outputs/2026-01-01/09-00-00/last.pt"


def test_evaluate_writes_under_outputs_evaluate_and_its_data_root_replaces_the_runs(trained_run, tmp_path):
    run_dir = OmegaConf.to_container(compose_with(config_name="evaluate", hydra=True).hydra.run)["dir"]
    assert run_dir.startswith("outputs/evaluate/")
    elsewhere = tmp_path / "elsewhere"
    cfg = compose_with(f"checkpoint={trained_run / 'last.pt'}", f"data.root={elsewhere}", config_name="evaluate")
    with pytest.raises(UsageError, match=str(elsewhere)):  # the run's own root holds the data; this one does not
        evaluate_checkpoint(cfg, tmp_path / "out")


def test_cuda_graph_records_whether_it_ran_and_capture_s():
    cfg = compose_with("cuda_graph=true", "batch_size=40")
    model = ResNet9(width=0.0625)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    record = RunRecord(image_shape=[32, 32, 3])  # (the record of a run on CIFAR's images)
    state = types.SimpleNamespace(record=record, optimizer=optimizer, scaler=None)
    step = trainer._captured_step(cfg, state, model, build.step_settings(cfg, torch.device("cpu")))
    document = state.record.document()  # what metrics.json holds
    assert step is None and document["cuda_graph"] is False  # (on a CPU the step runs eagerly)
    assert document["capture_s"] >= 0 and document["timings"]["warmup_s"] >= document["capture_s"]


def mylab():
    """examples/mylab.py, the user's module of the README's example."""
    spec = importlib.util.spec_from_file_location("mylab", REPO / "examples" / "mylab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gradcam_explains_layer3_res_of_resnet9_and_a_models_own_gradcam_layer():
    assert gradcam.target_layer(ResNet9(width=0.0625)) == "layer3.res"
    tiny = mylab().TinyNet(num_classes=10, width=0.25)
    assert gradcam.target_layer(tiny) == "features.4"  # without gradcam_layer: its last convolution
    tiny.gradcam_layer = tiny.features[0]
    assert gradcam.target_layer(tiny) == "features.0"
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    maps = gradcam.class_activation_maps(tiny, images, [0, 1, 2])
    assert maps.shape == (3, 32, 32) and 0 <= maps.min() and maps.max() <= 1


def test_a_users_model_gets_the_ema_as_resnet9_does():
    torch.manual_seed(0)
    tiny = mylab().TinyNet(num_classes=10, width=0.25)
    ema = WeightEMA(tiny, decay=0.9)
    first = [tensor.clone() for tensor in (*tiny.parameters(), *tiny.buffers())]
    ema.update_parameters(tiny)
    tiny(torch.randn(8, 3, 32, 32))  # training mode: BatchNorm's running statistics move
    with torch.no_grad():
        for parameter in tiny.parameters():
            parameter.add_(1.0)
    ema.update_parameters(tiny)
    second = [*tiny.parameters(), *tiny.buffers()]
    averaged = [*ema.module.parameters(), *ema.module.buffers()]
    floats = [(mine, a, b) for mine, a, b in zip(averaged, first, second, strict=True) if a.is_floating_point()]
    assert len(floats) == len(list(tiny.parameters())) + 4  # weights and both BatchNorms' running statistics
    for mine, a, b in floats:
        torch.testing.assert_close(mine, 0.9 * a + 0.1 * b)
