"""Data sets at other sizes than CIFAR's 32x32 RGB: the example's 64x64x3 (CIFAR-10 upscaled) and 28x28x1 (CIFAR-10
in grey) options, trained, evaluated and predicted from as a user runs them from a copy of examples/; and the
shape a data option states, checked against the images it gives."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import REPO
from omegaconf import OmegaConf
from PIL import Image
from test_user_options import run_in

from resnet9.core.errors import UsageError
from resnet9.data.augment import DeviceLoader
from resnet9.predict import classify, image_shape, load_image, normalization
from resnet9.training.engine import build
from resnet9.training.engine.loop import StepSettings, predict
from resnet9.training.engine.state import read_resumable

TINY = ["data.limit_train=200", "data.limit_test=100", "data.num_workers=0", "batch_size=40", "epochs=2",
        "model.width=0.0625", "device=cpu", "logger=none", "progress=false", "optimizer.lr=0.1",
        "scheduler.lr_min=0.01", "warmup=true"]  # fmt: skip
SIZES = {  # data option -> (its overrides, the image shape it gives)
    "upscaled64": (["augment.pad=8", "augment.cutout=16"], [64, 64, 3]),
    "grey28": ([], [28, 28, 1]),
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sizes")
    shutil.copytree(REPO / "examples", folder, dirs_exist_ok=True)
    return folder


def example_module(lab: Path) -> ModuleType:
    """mylab.py of the lab folder, imported from its file."""
    spec = importlib.util.spec_from_file_location("mylab_sizes", lab / "mylab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=list(SIZES))
def sized_run(request, lab, synthetic_root) -> tuple[str, Path]:
    """A tiny run on one of the example's data sets at another size."""
    option = request.param
    overrides, _ = SIZES[option]
    result = run_in(lab, "resnet9.train", "--config-dir", "conf", f"data={option}", f"data.root={synthetic_root}",
                    *overrides, *TINY, f"hydra.run.dir={option}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return option, lab / option


def test_a_data_set_at_another_size_trains_and_records_its_image_shape(sized_run):
    """The model follows the data's channels (model.in_channels), its head pools whatever map the size leaves,
    warm-up and the summary take the data's shape, and metrics.json and last.pt record it for predict."""
    option, run = sized_run
    shape = SIZES[option][1]
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "completed" and record["image_shape"] == shape
    assert record["config"]["model"]["in_channels"] == record["config"]["data"]["channels"] == shape[2]
    assert record["final_test_acc"] > 0.1  # above chance on the synthetic colours
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert checkpoint["image_shape"] == shape and checkpoint["model"]["prep.0.weight"].shape[1] == shape[2]
    assert f"[1, 4, {shape[0]}, {shape[1]}]" in (run / "model_summary.txt").read_text()  # prep's output, width 1/16


def test_a_data_set_at_another_size_evaluates_with_gradcam_on_maps_of_4x4_or_more(lab, sized_run):
    option, run = sized_run
    result = run_in(lab, "resnet9.evaluate", "--config-dir", "conf", f"checkpoint={run / 'last.pt'}", "device=cpu",
                    "gallery_size=12", f"hydra.run.dir=eval-{option}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    folder = lab / f"eval-{option}"
    record, evaluation = (
        json.loads((run / "metrics.json").read_text()),
        json.loads((folder / "evaluation.json").read_text()),
    )
    assert evaluation["test_acc"] == record["final_test_acc"] and evaluation["n_test"] == 100
    assert (folder / "gradcam.png").is_file() and (folder / "misclassified.png").is_file()
    gradcam_lines = [line for line in (folder / "evaluate.log").read_text().splitlines() if "GradCAM on" in line]
    if option == "grey28":  # layer3.res is 3x3 at 28 px: an earlier layer is explained, as one line says
        (line,) = gradcam_lines
        assert line.endswith("GradCAM on layer3.conv.0 (7x7 maps) instead of layer3.res, whose maps are 3x3 at 28x28 "
                             "input; a model names another with its gradcam_layer attribute")  # fmt: skip
    else:  # 8x8 maps at 64 px: ResNet9's own choice
        assert gradcam_lines == []


def test_predict_resizes_and_converts_to_the_trained_shape(lab, sized_run, synthetic_root, tmp_path):
    """A photo of any size and colour becomes an image of the run's shape (a grey run: Pillow's grey, as the
    example's data set is made); a test image saved as a PNG gets the probabilities evaluation gives it."""
    option, run = sized_run
    height, width, channels = SIZES[option][1]
    colour = np.random.default_rng(0).integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "photo.png")
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert image_shape(checkpoint, run / "last.pt") == (height, width, channels)
    loaded, note = load_image(tmp_path / "photo.png", (height, width, channels))
    assert loaded.shape == (height, width, channels)
    assert note == f"resized from 40x48 to {width}x{height}" + ("; converted to grey" if channels == 1 else "")

    result = run_in(lab, "resnet9.predict", "--config-dir", "conf", "--checkpoint", str(run / "last.pt"),
                    "--device", "cpu", "--json", str(tmp_path / "photo.png"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads(result.stdout)
    assert row["note"] == note and sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)

    data = getattr(example_module(lab), option)(synthetic_root, False, 200, 100)  # the run's test images
    picture = data.test_images[0] if channels == 3 else data.test_images[0, :, :, 0]  # (Pillow's grey is 2-D)
    Image.fromarray(picture).save(tmp_path / "test_image.png")
    image, no_note = load_image(tmp_path / "test_image.png", (height, width, channels))
    assert no_note is None and np.array_equal(image, data.test_images[0])
    model, _ = build.trained_model(run / "last.pt", torch.device("cpu"))
    stats = normalization(checkpoint)
    loader = DeviceLoader(data.test_images[:1], data.test_labels[:1], 1, torch.device("cpu"), train=False, stats=stats)
    logits, _ = predict(model, loader, StepSettings(device=torch.device("cpu")))
    expected = torch.softmax(logits, 1)[0].numpy()
    assert classify(model, image[None], torch.device("cpu"), stats)[0] == pytest.approx(expected, abs=1e-5)


def test_a_stated_shape_the_images_do_not_have_is_one_line(lab, synthetic_root):
    """data.image_size and data.channels are checked against the images as they load, as data.num_classes is;
    a model given other channels than the data's is refused before any work."""
    result = run_in(lab, "resnet9.train", "--config-dir", "conf", "data=upscaled64", "data.image_size=32",
                    f"data.root={synthetic_root}", *TINY, "hydra.run.dir=wrong-size")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: data.image_size=32 but mylab.upscaled64 gave 64x64 images; set data.image_size=64"
    ]
    result = run_in(lab, "resnet9.train", "--config-dir", "conf", "data=grey28", "model.in_channels=3",
                    "data.root=nowhere", *TINY, "hydra.run.dir=wrong-channels")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model.in_channels=3 but the data set's images have 1 channel(s) (data.channels); e.g. "
        "model.in_channels=1, or follow the data: model.in_channels=${data.channels}"
    ]
    assert not (lab / "nowhere").exists()


def test_a_checkpoint_from_before_the_shape_keys_resumes_and_predicts_as_32px_rgb(trained_run, tmp_path):
    """last.pt of a run from before data options stated `channels` and `image_size` (and models took
    `in_channels`): its images were CIFAR's 32x32 RGB, so today's config of the same run resumes it, and predict
    resizes to 32x32 RGB."""
    checkpoint = torch.load(trained_run / "last.pt", weights_only=True)
    today = OmegaConf.create(checkpoint["config"])
    for section, key in (("data", "channels"), ("data", "image_size"), ("model", "in_channels")):
        del checkpoint["config"][section][key]
    del checkpoint["image_shape"]
    torch.save(checkpoint, tmp_path / "last.pt")
    assert read_resumable(tmp_path / "last.pt", today, torch.device("cpu")) is not None
    assert image_shape(checkpoint, tmp_path / "last.pt") == (32, 32, 3)
    today.data.channels = 1  # while another shape is another run
    with pytest.raises(UsageError, match="its run had data.channels=3 there, 1 now"):
        read_resumable(tmp_path / "last.pt", today, torch.device("cpu"))


@pytest.mark.parametrize("shape", [[100_000, 100_000, 3], [32, 32, 2], [32, 32], "32x32x3", [32.0, 32, 3]])
def test_a_checkpoints_image_shape_is_checked_before_any_image_is_made(shape, tmp_path):
    """last.pt is a file from disk: an image_shape that is no (height, width, channels) of 8..4096 px and 1 or 3
    channels (a crafted one asking for a huge image) is one line, not an allocation."""
    with pytest.raises(UsageError) as err:
        image_shape({"image_shape": shape}, tmp_path / "last.pt")
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{tmp_path / 'last.pt'}: its image_shape ")
    assert str(err.value).endswith("; pass a last.pt written by resnet9.train")
