import json

import numpy as np
import pytest
import torch
from PIL import Image

from resnet9 import build, data
from resnet9.augment import DeviceLoader
from resnet9.loop import StepSettings, predict


@pytest.fixture
def images(tmp_path, synthetic_root):
    cifar = data.load(synthetic_root, download=False, limit_test=20)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(cifar.test_images[0]).save(folder / "a_test_image.png")
    big = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(folder / "b_large.jpg")
    (folder / "notes.txt").write_text("not an image, and skipped in folders")
    return folder, cifar


def test_probabilities_sum_to_one_and_match_the_test_pipeline(run_cli, trained_run, images):
    folder, cifar = images
    result = run_cli("resnet9.predict", "--checkpoint", str(trained_run / "last.pt"), "--json", str(folder))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert [row["path"].rsplit("/", 1)[1] for row in rows] == ["a_test_image.png", "b_large.jpg"]
    for row in rows:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert list(row["probabilities"]) == list(data.CLASSES)
    assert rows[0]["note"] is None and rows[1]["note"] == "resized from 64x48 to 32x32"
    # The PNG of a test image gets the probabilities the evaluation pipeline gives that image.
    model, _ = build.trained_model(trained_run / "last.pt", torch.device("cpu"))
    loader = DeviceLoader(cifar.test_images[:1], cifar.test_labels[:1], 1, torch.device("cpu"), train=False)
    logits, _ = predict(model, loader, StepSettings(device=torch.device("cpu")))
    expected = torch.softmax(logits, 1)[0].tolist()
    assert list(rows[0]["probabilities"].values()) == pytest.approx(expected, abs=1e-5)


def test_human_output_lists_the_top_k(run_cli, trained_run, images):
    folder, _ = images
    result = run_cli("resnet9.predict", "--checkpoint", str(trained_run / "last.pt"), "--top-k", "2",
                     str(folder / "b_large.jpg"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{folder / 'b_large.jpg'}: ") and line.endswith("(resized from 64x48 to 32x32)")
    assert line.count("%") == 2


@pytest.mark.parametrize(
    "content, fragment",
    [(b"plain text", "not a readable image"), (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image")],
    ids=["text-file", "corrupt-png"],
)
def test_non_images_give_one_line(run_cli, trained_run, tmp_path, content, fragment):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    result = run_cli("resnet9.predict", "--checkpoint", str(trained_run / "last.pt"), str(bad))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad}: {fragment}")


def test_empty_folder_and_missing_file_are_one_line(run_cli, trained_run, tmp_path):
    (tmp_path / "empty").mkdir()
    for target, fragment in ((tmp_path / "empty", "no image files"), (tmp_path / "missing.png", "no such file")):
        result = run_cli("resnet9.predict", "--checkpoint", str(trained_run / "last.pt"), str(target))
        assert result.returncode == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
