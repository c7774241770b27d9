import json

import numpy as np
import pytest
import torch
from PIL import Image

from resnet9.core.errors import UsageError
from resnet9.data import datasets
from resnet9.data.augment import DeviceLoader
from resnet9.predict import load_image, main
from resnet9.training.engine import build
from resnet9.training.engine.loop import StepSettings, predict


@pytest.fixture
def images(tmp_path, synthetic_root):
    cifar = datasets.load(synthetic_root, download=False, limit_test=20)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(cifar.test_images[0]).save(folder / "a_test_image.png")
    big = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(folder / "b_large.jpg")
    (folder / "notes.txt").write_text("not an image, and skipped in folders")
    return folder, cifar


def run_predict(capsys, *args: str) -> tuple[int, str, str]:
    """`resnet9-predict <args>` in this process: (exit status, stdout, stderr)."""
    try:
        status = main(list(args))
    except SystemExit as exit_status:
        status = exit_status.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_probabilities_sum_to_one_and_match_the_test_pipeline(capsys, trained_run, images):
    folder, cifar = images
    # --device cpu: compared below with the CPU's fp32 pipeline to 1e-5 (a GPU's TF32 convolutions are not)
    status, out, err = run_predict(
        capsys, "--checkpoint", str(trained_run / "last.pt"), "--device", "cpu", "--json", str(folder)
    )
    assert status == 0, err[-2000:]
    rows = json.loads(out)
    assert [row["path"].rsplit("/", 1)[1] for row in rows] == ["a_test_image.png", "b_large.jpg"]
    for row in rows:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert list(row["probabilities"]) == list(datasets.CLASSES)
    assert rows[0]["note"] is None and rows[1]["note"] == "resized from 64x48 to 32x32"
    # The PNG of a test image gets the probabilities the evaluation pipeline gives that image.
    model, _ = build.trained_model(trained_run / "last.pt", torch.device("cpu"))
    loader = DeviceLoader(cifar.test_images[:1], cifar.test_labels[:1], 1, torch.device("cpu"), train=False)
    logits, _ = predict(model, loader, StepSettings(device=torch.device("cpu")))
    expected = torch.softmax(logits, 1)[0].tolist()
    assert list(rows[0]["probabilities"].values()) == pytest.approx(expected, abs=1e-5)


def test_human_output_lists_the_top_k(run_cli, trained_run, images):
    """Through the command itself once (a subprocess): the same code as the in-process calls here."""
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
def test_non_images_give_one_line(capsys, trained_run, tmp_path, content, fragment):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    status, _, err = run_predict(capsys, "--checkpoint", str(trained_run / "last.pt"), str(bad))
    assert status == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {bad}: {fragment}")


def test_empty_folder_and_missing_file_are_one_line(capsys, trained_run, tmp_path):
    (tmp_path / "empty").mkdir()
    for target, fragment in ((tmp_path / "empty", "no image files"), (tmp_path / "missing.png", "no such file")):
        status, _, err = run_predict(capsys, "--checkpoint", str(trained_run / "last.pt"), str(target))
        assert status == 2 and fragment in err and len(err.strip().splitlines()) == 1


def grey_picture() -> np.ndarray:
    """A 32x32 grey gradient, 8-bit."""
    return np.tile(np.linspace(20, 230, 32).astype(np.uint8), (32, 1))


@pytest.mark.parametrize(
    "mode, note",
    [
        ("I;16", "16-bit grey scaled to 8 bits"),
        ("I", "16-bit grey scaled to 8 bits"),
        ("P", None),
        ("RGBA", "transparency flattened onto white"),
        ("LA", "transparency flattened onto white"),
        ("CMYK", None),
        ("1", None),
    ],
)
def test_every_pillow_mode_gives_the_picture_it_shows(tmp_path, mode, note):
    grey = grey_picture()
    if mode == "I;16":  # the same picture in 16 bits (0..255 -> 0..65535), as a 16-bit PNG
        image = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode == "I":  # ... as 32-bit integers (a TIFF)
        image = Image.fromarray(grey.astype(np.int32) * 257)
    elif mode in ("P", "LA", "1"):  # from grey: a grey palette, exact
        image = Image.fromarray(grey).convert(mode)
    else:
        image = Image.fromarray(grey).convert("RGB").convert(mode)
    path = tmp_path / ("picture.tiff" if mode in ("CMYK", "I") else "picture.png")
    image.save(path)
    loaded, got_note = load_image(path)
    assert got_note == note
    assert loaded.shape == (32, 32, 3) and loaded.dtype == np.uint8
    if mode == "1":  # bilevel: black or white only, where the grey was dark or light (Pillow dithers)
        assert set(np.unique(loaded)) <= {0, 255}
    else:  # within a step of Pillow's own conversions of the 8-bit picture (16-bit: not clipped to white)
        assert np.abs(loaded.astype(int) - grey[..., None]).max() <= 2, mode


def test_a_transparent_pixel_becomes_white_and_float_pixels_are_refused(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16, :, 3] = 255  # top half opaque black, bottom half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "half.png")
    loaded, _ = load_image(tmp_path / "half.png")
    assert loaded[:16].max() == 0 and loaded[16:].min() == 255
    dark = np.full((32, 32), 200, np.int32)  # a dark 16-bit picture (as a 16-bit PGM opens): scaled, not read as 8-bit
    Image.fromarray(dark).save(tmp_path / "dark.tiff")
    assert load_image(tmp_path / "dark.tiff")[0].max() == 1  # 200 / 65535 of white
    Image.fromarray(np.ones((32, 32), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(UsageError, match="floating-point pixels have no fixed range"):
        load_image(tmp_path / "float.tiff")


@pytest.mark.parametrize("limit", [1000, 3000], ids=["over twice the limit", "over the limit"])
def test_a_decompression_bomb_is_refused_in_one_line(tmp_path, monkeypatch, trained_run, capsys, limit):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "bomb.png")
    # 4,096 pixels: over the limit, as a huge file would be (Pillow raises beyond twice it, warns below that)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(SystemExit) as exit_status:
        main(["--checkpoint", str(trained_run / "last.pt"), str(tmp_path / "bomb.png")])
    assert exit_status.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"error: {tmp_path / 'bomb.png'}: refused, too many pixels to decode safely; shrink it first, then pass "
        "PNG/JPEG files"
    )


def test_non_finite_weights_are_warned_about(trained_run, tmp_path, caplog):
    checkpoint = torch.load(trained_run / "last.pt", weights_only=True)
    checkpoint["model"]["fc.weight"][0, 0] = float("nan")
    torch.save(checkpoint, tmp_path / "diverged.pt")
    build.trained_model(tmp_path / "diverged.pt", torch.device("cpu"))
    assert f"{tmp_path / 'diverged.pt'} holds 1 non-finite weights (did its training diverge?)" in caplog.text


def test_both_commands_name_a_checkpoint_either_way(capsys, trained_run, images):
    """evaluate's `checkpoint=PATH` and predict's `--checkpoint PATH` work in both commands."""
    from resnet9.evaluate import as_override

    folder, _ = images
    outputs = []
    for naming in (["--checkpoint", str(trained_run / "last.pt")], [f"checkpoint={trained_run / 'last.pt'}"]):
        assert main([*naming, "--json", str(folder / "b_large.jpg")]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1]
    assert as_override(["--checkpoint", "a.pt", "device=cpu", "--checkpoint=b.pt"]) == [
        "checkpoint=a.pt", "device=cpu", "checkpoint=b.pt"]  # fmt: skip
