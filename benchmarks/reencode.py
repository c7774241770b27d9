"""A CIFAR-10 copy passed once more through JPEG: how much accuracy does one more lossy pass cost?

    python benchmarks/reencode.py SRC DEST [--quality 50]

Reads the copy under SRC (the official python layout), encodes every training and test image as JPEG at
`--quality` (Pillow, 4:2:0 chroma, as the staged copy's own pass was) and decodes it again, and writes the
result under DEST in the same layout, in the same order, with SRC's batches.meta. Prints the damage: PSNR
and mean absolute error against SRC. Issue 14 compares the defaults trained on both copies: if this pass
costs 2-3 points, the staged copy's first pass (about 30 dB against the official files) plausibly did too.
"""

from __future__ import annotations

import argparse
import io
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from resnet9.data import datasets


def reencoded(images: np.ndarray, quality: int) -> np.ndarray:
    """(N, 32, 32, 3) uint8 images through one JPEG encode and decode."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def write_batch(path: Path, label: str, images: np.ndarray, labels: np.ndarray) -> None:
    """One batch in the official layout: rows of 1024 red, 1024 green, 1024 blue values; bytes keys."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {b"batch_label": label.encode(), b"labels": labels.tolist(), b"data": np.ascontiguousarray(rows)}
    with open(path, "wb") as file:
        pickle.dump(batch, file, protocol=2)


def damage(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and mean absolute error (grey levels) of `after` against `before`."""
    difference = before.astype(np.float64) - after.astype(np.float64)
    mse = float(np.mean(difference**2))
    return (math.inf if mse == 0 else 10 * math.log10(255**2 / mse)), float(np.mean(np.abs(difference)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="the folder that holds cifar-10-batches-py/")
    parser.add_argument("dest", type=Path, help="where to write DEST/cifar-10-batches-py/")
    parser.add_argument("--quality", type=int, default=50)
    args = parser.parse_args()
    cifar = datasets.load(args.src, download=False)
    folder = args.dest / datasets.BATCHES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    train = reencoded(cifar.train_images, args.quality)
    for index, name in enumerate(datasets.TRAIN_FILES):
        rows = slice(index * datasets.ROWS_PER_BATCH, (index + 1) * datasets.ROWS_PER_BATCH)
        write_batch(folder / name, f"training batch {index + 1} of 5", train[rows], cifar.train_labels[rows])
    test = reencoded(cifar.test_images, args.quality)
    write_batch(folder / datasets.TEST_FILE, "testing batch 1 of 1", test, cifar.test_labels)
    meta = args.src / datasets.BATCHES_DIR / "batches.meta"
    if meta.is_file():
        shutil.copyfile(meta, folder / "batches.meta")
    for split, before, after in (("train", cifar.train_images, train), ("test", cifar.test_images, test)):
        psnr, mae = damage(before, after)
        print(f"{split}: JPEG quality {args.quality} against {args.src}: PSNR {psnr:.2f} dB, mean abs error {mae:.2f}")


if __name__ == "__main__":
    main()
