"""Classify image files with a trained checkpoint: top-k classes with softmax probabilities.

    python -m resnet9.predict cat.png ship.jpg                    # newest outputs/*/*/last.pt
    python -m resnet9.predict --checkpoint run/last.pt photos/    # every image in a folder
    python -m resnet9.predict --top-k 5 --json cat.png            # machine-readable

Images are converted to what the run trained on (RGB, or grey for a one-channel data set) and resized to its
image size (`image_shape` in its last.pt: 32x32 for CIFAR and for checkpoints from before it was recorded; area
averaging when shrinking), with a note. Files that are not readable images stop with a one-line error and exit
status 2.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m resnet9.predict --version` (or --help): answered before torch is imported
    from resnet9.cli import answer_if_asked

    answer_if_asked(None)

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from resnet9 import cli
from resnet9.core.errors import UsageError, exit_on_usage_error, first_line
from resnet9.data import augment
from resnet9.data.datasets import CLASSES
from resnet9.training.config import schema, targets
from resnet9.training.engine import build

ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}  # (not LAB, whose A is a colour axis)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def newest_checkpoint(root: Path = Path("outputs")) -> Path | None:
    found = sorted(root.glob("*/*/last.pt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def image_paths(inputs: list[str]) -> list[Path]:
    """The given files, and the image files (by suffix) inside given folders, in name order."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            inside = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise UsageError(f"{item}: no image files in this folder; pass PNG/JPEG files or a folder of them")
            paths += inside
        elif item.is_file():
            paths.append(item)
        else:
            raise UsageError(f"{item}: no such file or folder; pass PNG/JPEG files or a folder of them")
    return paths


def load_image(path: Path, shape: tuple[int, int, int] = (32, 32, 3)) -> tuple[np.ndarray, str | None]:
    """(uint8 image of `shape` (height, width, channels), a note on what was changed to get it: frames, depth,
    transparency, size, colour)."""
    fix = "pass PNG/JPEG files"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a huge image: refused, not decoded
            with Image.open(path) as image:
                image.load()
                rgb, notes = _as_rgb(image, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UsageError(f"{path}: refused, too many pixels to decode safely; shrink it first, then {fix}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        reason = first_line(err)
        raise UsageError(f"{path}: not a readable image ({reason}); {fix}") from None
    height, width, channels = shape
    if rgb.size != (width, height):  # (Pillow's sizes are width x height)
        notes.append(f"resized from {rgb.size[0]}x{rgb.size[1]} to {width}x{height}")
        shrinking = rgb.size[0] > width or rgb.size[1] > height
        rgb = rgb.resize((width, height), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb, dtype=np.uint8)
    if channels == 1:  # Pillow's grey (ITU-R 601-2 luma), as examples/mylab.py's grey data set is made
        if not (pixels == pixels[..., :1]).all():
            notes.append("converted to grey")
        pixels = np.asarray(rgb.convert("L"), dtype=np.uint8)[..., None]
    return pixels, "; ".join(notes) or None


def _as_rgb(image: Image.Image, path: Path) -> tuple[Image.Image, list[str]]:
    """8-bit RGB from any Pillow mode: 16-bit grey scaled (not clipped), transparency flattened onto white,
    palette/CMYK/YCbCr converted; float pixels and modes without an RGB meaning are refused."""
    notes = [f"first of {image.n_frames} frames"] if getattr(image, "n_frames", 1) > 1 else []
    mode = image.mode
    if mode.startswith("I"):  # 16-bit grey (I;16*), or 32-bit integers holding it (I)
        values = np.asarray(image).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            found = f"{values.min()}..{values.max()}"
            raise UsageError(f"{path}: pixel values {found} are not 8- or 16-bit; save it as an 8- or 16-bit PNG")
        values, notes = (values * 255 + 32767) // 65535, [*notes, "16-bit grey scaled to 8 bits"]
        return Image.fromarray(values.astype(np.uint8)).convert("RGB"), notes
    if mode == "F":
        raise UsageError(f"{path}: floating-point pixels have no fixed range; save it as an 8- or 16-bit PNG")
    if mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), [*notes, "transparency flattened onto white"]
    try:
        return image.convert("RGB"), notes
    except ValueError:
        raise UsageError(f"{path}: Pillow cannot convert {mode} pixels to RGB; save it as an RGB PNG/JPEG") from None


@torch.no_grad()
def classify(
    model: torch.nn.Module, images: np.ndarray, device: torch.device, stats: augment.Stats = augment.CIFAR10_STATS
) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, classes) probabilities (the SoftMax), normalized exactly like the test images."""
    model.eval()
    with torch.no_grad():
        logits = model(augment.normalize_images(images, stats).to(device))
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def class_names(checkpoint: dict, count: int) -> tuple[str, ...]:
    """The names of a run's classes (a file from disk: checked; a checkpoint from before they were saved is
    CIFAR-10's, or numbered)."""
    names = checkpoint.get("classes")
    if not (isinstance(names, list) and len(names) == count and all(isinstance(n, str) for n in names)):
        names = CLASSES if count == len(CLASSES) else [f"class {i}" for i in range(count)]
    return tuple(n[:40] for n in names)


def image_shape(checkpoint: dict, path: Path) -> tuple[int, int, int]:
    """(height, width, channels) of the images the run trained on (a file from disk: checked); 32x32 RGB for a
    checkpoint from before it was saved, the only shape then."""
    shape = checkpoint.get("image_shape")
    if shape is None:
        return 32, 32, 3
    if isinstance(shape, list | tuple) and len(shape) == 3 and all(type(n) is int for n in shape):
        height, width, channels = shape
        if 8 <= height <= 4096 and 8 <= width <= 4096 and channels in (1, 3):  # no huge image from a crafted file
            return height, width, channels
    raise UsageError(
        f"{path}: its image_shape {str(shape)[:60]} is no (height, width, channels) of 8..4096 pixels and 1 or 3 "
        f"channels; pass a last.pt written by resnet9.train"
    )


def normalization(checkpoint: dict) -> augment.Stats:
    """The run's per-channel mean and std, checked (CIFAR-10's for a checkpoint from before they were saved)."""
    data_cfg = checkpoint["config"].get("data") if isinstance(checkpoint["config"], dict) else None
    return schema.saved_normalization(data_cfg) or augment.CIFAR10_STATS


def _as_option(argv: list[str]) -> list[str]:
    """evaluate's `checkpoint=PATH` -> `--checkpoint PATH` (an image file is never named `checkpoint=...`)."""
    out = []
    for arg in argv:
        out += ["--checkpoint", arg.removeprefix("checkpoint=")] if arg.startswith("checkpoint=") else [arg]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--version", action="version", version=cli.version_line())
    parser.add_argument(
        "--checkpoint", type=Path,
        help="a last.pt from resnet9.train (default: newest in outputs/); checkpoint=PATH works too, as in "
        "resnet9-evaluate",
    )  # fmt: skip
    parser.add_argument("--top-k", type=int, default=3, choices=range(1, 11), metavar="{1..10}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print JSON: every class's probability per image")
    parser.add_argument(
        "--config-dir", action="append", default=[], metavar="DIR",
        help="the config folder a run of your own model trained with: its model may then be built from the "
        "checkpoint (the package's own models need none)",
    )  # fmt: skip
    args = parser.parse_args(_as_option(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(format="%(levelname)s: %(message)s")  # e.g. a checkpoint with non-finite weights
    with exit_on_usage_error():
        checkpoint = args.checkpoint or newest_checkpoint()
        if checkpoint is None:
            raise UsageError("no checkpoint given and none under outputs/; pass --checkpoint <run>/last.pt")
        device = build.device(args.device)
        model, saved = build.trained_model(
            Path(checkpoint), device, "--checkpoint ", targets.permitted(args.config_dir)
        )
        paths = image_paths(args.inputs)
        shape = image_shape(saved, Path(checkpoint))
        loaded = [load_image(path, shape) for path in paths]
    probabilities = classify(model, np.stack([image for image, _ in loaded]), device, normalization(saved))
    classes = class_names(saved, probabilities.shape[1])
    if args.json:
        rows = [
            {"path": str(path), "note": note, "probabilities": dict(zip(classes, map(float, probs), strict=True))}
            for path, (_, note), probs in zip(paths, loaded, probabilities, strict=True)
        ]
        print(json.dumps(rows, indent=1))
        return 0
    print(f"checkpoint: {checkpoint}")
    for path, (_, note), probs in zip(paths, loaded, probabilities, strict=True):
        top = np.argsort(-probs)[: args.top_k]
        ranked = ", ".join(f"{classes[c]} {100 * probs[c]:.1f}%" for c in top)
        print(f"{path}: {ranked}" + (f"  ({note})" if note else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
