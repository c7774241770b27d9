"""CIFAR-10 as uint8 arrays: download it (official archive, checksum verified) or read a pre-staged copy.

The on-disk form is the official python layout, `<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}`.
A staged copy is validated by its structure (keys, dtype, shape, label range, counts), not by the official
per-file MD5s: a re-packed copy is valid data with other bytes, and torchvision's `CIFAR10` class refuses it.
Every problem surfaces as an `errors.DataError` whose message is one line saying where we looked and how to fix it.
"""

from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet9.errors import DataError

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = len(CLASSES)
ROWS_PER_BATCH = 10_000
TRAIN_PER_CLASS, TEST_PER_CLASS = 5_000, 1_000
TRAIN_SIZE, TEST_SIZE = NUM_CLASSES * TRAIN_PER_CLASS, NUM_CLASSES * TEST_PER_CLASS
# Subsets (data.limit_*) are drawn with this fixed seed, not the run's seed, so that every run and every
# job of a sweep sees the same images.
SUBSET_SEED = 0


@dataclass(frozen=True)
class Cifar10:
    """Images are (N, 32, 32, 3) uint8 in HWC order; labels are (N,) int64 in 0..9.

    `device_copies` keeps the copies of these images that training devices hold (augment.DeviceLoader fills
    it), so that jobs sharing this data in one process also share those copies.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...] = CLASSES
    device_copies: dict = field(default_factory=dict, compare=False, repr=False)


def load(
    root: str | Path,
    download: bool = True,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Cifar10:
    """Read CIFAR-10 under `root` (downloading it first if absent and allowed); optionally subset it."""
    root = Path(root).expanduser()
    folder = root / BATCHES_DIR
    if not _is_folder(folder):
        if not download:
            raise DataError(
                f"CIFAR-10 not found: no folder {folder}; stage the official python batches there "
                f"or allow the download with data.download=true"
            )
        _download(root)
    train = [_read_batch(folder / name) for name in TRAIN_FILES]
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    test_images, test_labels = _read_batch(folder / TEST_FILE)
    _check_class_counts(folder, "training", train_labels, TRAIN_PER_CLASS)
    _check_class_counts(folder, "test", test_labels, TEST_PER_CLASS)
    if limit_train is not None:
        keep = balanced_subset(train_labels, limit_train)
        train_images, train_labels = train_images[keep], train_labels[keep]
    if limit_test is not None:
        keep = balanced_subset(test_labels, limit_test)
        test_images, test_labels = test_images[keep], test_labels[keep]
    return Cifar10(train_images, train_labels, test_images, test_labels)


def balanced_subset(labels: np.ndarray, n: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """Indices of a fixed, class-balanced subset of `n` items, in their original order.

    Each class gets n // 10 items (the first n % 10 classes one more), drawn at random with `seed` — not
    the first n, since a staged test set may be sorted by class.
    """
    if not NUM_CLASSES <= n <= len(labels):
        raise DataError(f"subset size {n} is out of range: use {NUM_CLASSES}..{len(labels)} images")
    rng = np.random.default_rng(seed)
    picks = []
    for cls in range(NUM_CLASSES):
        wanted = n // NUM_CLASSES + (1 if cls < n % NUM_CLASSES else 0)
        members = np.flatnonzero(labels == cls)
        if len(members) < wanted:
            raise DataError(f"subset of {n} needs {wanted} images of class {cls}, only {len(members)} exist")
        picks.append(rng.choice(members, size=wanted, replace=False))
    return np.sort(np.concatenate(picks))


def _is_folder(folder: Path) -> bool:
    try:
        return folder.is_dir()
    except OSError as err:  # e.g. a parent the user may not enter
        raise DataError(
            f"cannot read {folder} ({err.strerror or type(err).__name__}); give yourself read access to it "
            f"or point data.root at a readable copy"
        ) from None


def _download(root: Path) -> None:
    """The official archive into `root`; on failure, the folders this created are removed again."""
    # Imported here: torchvision is only needed on the download path.
    from torchvision.datasets.utils import download_and_extract_archive

    created = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
    try:
        download_and_extract_archive(ARCHIVE_URL, download_root=str(root), md5=ARCHIVE_MD5)
    except Exception as err:  # network errors, checksum mismatch, disk full: all mean "stage it by hand"
        if created is not None and not (root / BATCHES_DIR).is_dir():  # no empty data folder left behind
            shutil.rmtree(created, ignore_errors=True)
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"CIFAR-10 not found in {root / BATCHES_DIR} and the download failed ({reason}); offline, unpack "
            f"cifar-10-python.tar.gz so that {root / BATCHES_DIR} exists, or pass the folder that holds "
            f'cifar-10-batches-py/: data.root=<folder> (make train ARGS="data.root=<folder>")'
        ) from None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official batch file -> (10000, 32, 32, 3) uint8 images, (10000,) int64 labels."""
    fix = "re-stage it from the official cifar-10-python.tar.gz"
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch missing: {path}; {fix}")
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except _ForeignObject as err:
        what = f"asks to load {err}, which no CIFAR-10 batch holds"
        raise DataError(f"CIFAR-10 batch refused: {path} {what}; {fix}") from None
    except Exception as err:  # truncated or foreign files raise anything from EOFError to UnpicklingError
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise DataError(f"CIFAR-10 batch unreadable: {path} ({reason}); {fix}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"CIFAR-10 batch malformed: {path} has no b'data'/b'labels' entries; {fix}")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (ROWS_PER_BATCH, 3072):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(
            f"CIFAR-10 batch malformed: {path} data is {dtype} {shape}, expected uint8 ({ROWS_PER_BATCH}, 3072); {fix}"
        )
    if labels.shape != (ROWS_PER_BATCH,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"CIFAR-10 batch malformed: {path} has labels of shape {labels.shape}; {fix}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(
            f"CIFAR-10 batch malformed: {path} has labels in {labels.min()}..{labels.max()}, expected 0..9; {fix}"
        )
    # Rows hold 1024 red, then 1024 green, then 1024 blue values; albumentations wants HWC.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64)


class _ForeignObject(pickle.UnpicklingError):
    """A batch file named a Python object outside what the official batches hold."""


class _BatchUnpickler(pickle.Unpickler):
    """Reads the official batches (a pickle: a dict of bytes, lists and one uint8 NumPy array) and nothing else.

    A pickle can name any importable callable and have it called while loading: a crafted batch file would run
    code before any structure check saw it. Only the few names the official files (and re-packed copies
    written with NumPy 1 or 2) use are let through; any other name stops the load unresolved.
    """

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # NumPy 1 pickles, as in the official archive
        ("numpy._core.multiarray", "_reconstruct"),  # the same, written by NumPy 2
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
        ("numpy.core.numeric", "_frombuffer"),  # arrays at pickle protocol 5 (frombuffer refuses object dtypes)
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise _ForeignObject(f"{module}.{name}"[:80])
        return super().find_class(module, name)


def _check_class_counts(folder: Path, split: str, labels: np.ndarray, per_class: int) -> None:
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if (counts != per_class).any():
        raise DataError(
            f"CIFAR-10 {split} set in {folder} has {counts.tolist()} images per class, expected {per_class} "
            f"each; re-stage it from the official cifar-10-python.tar.gz"
        )
