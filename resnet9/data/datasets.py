"""CIFAR-10 and CIFAR-100 as uint8 arrays: download them (official archive, checksum verified) or read a staged copy.

The on-disk form is the official python layout: `<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}`, or
`<root>/cifar-100-python/{train,test,meta}` (the 100 fine labels). A staged copy is validated by its structure
(keys, dtype, shape, label range, counts), not by the official per-file MD5s: a re-packed copy is valid data with
other bytes, and torchvision's classes refuse it. Every problem surfaces as an `errors.DataError` whose message is
one line saying where we looked and how to fix it.

A data option of the `data` config group names one of `cifar10`/`cifar100` here (or a user's own function with
the same arguments) and returns an `ImageData`: the arrays and the class names.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from resnet9.core.errors import DataError, first_line

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_SIZE, TEST_SIZE = 50_000, 10_000  # both CIFAR sets
# Subsets (data.limit_*) are drawn with this fixed seed, not the run's seed, so that every run and every
# job of a sweep sees the same images.
SUBSET_SEED = 0


@dataclass(frozen=True)
class Layout:
    """Where a CIFAR set lives on disk and what its files must hold."""

    name: str
    folder: str  # under data.root
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    num_classes: int
    url: str
    md5: str
    archive: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file)


CIFAR10 = Layout(
    "CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels", 10,
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
    "cifar-10-python.tar.gz",
)  # fmt: skip
CIFAR100 = Layout(
    "CIFAR-100", "cifar-100-python", ("train",), "test", b"fine_labels", 100,
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-python.tar.gz",
)  # fmt: skip
BATCHES_DIR = CIFAR10.folder
TRAIN_FILES, TEST_FILE = CIFAR10.train_files, CIFAR10.test_file
NUM_CLASSES = CIFAR10.num_classes
ROWS_PER_BATCH = TRAIN_SIZE // len(CIFAR10.train_files)  # 10,000 images in each CIFAR-10 file


@dataclass(frozen=True)
class ImageData:
    """Images are (N, H, W, C) uint8, C = 1 (grey) or 3 (RGB), the same H, W, C for training and test (CIFAR:
    32, 32, 3); labels are (N,) int64 in 0..len(classes)-1.

    `device_copies` keeps the copies of these images that training devices hold (augment.DeviceLoader fills
    it), so that jobs sharing this data in one process also share those copies.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...] = CLASSES
    device_copies: dict = field(default_factory=dict, compare=False, repr=False)

    def test_digest(self) -> str:
        """A fingerprint of the test images and labels: a run records it, and evaluate checks that it scores
        the very images the run was scored on."""
        digest = hashlib.blake2b(digest_size=16)
        for array in (self.test_images, self.test_labels):
            digest.update(str((array.shape, array.dtype.str)).encode())
            digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of every image: what the model, the augmentation and predict are sized by."""
        height, width, channels = self.train_images.shape[1:]
        return int(height), int(width), int(channels)


def checked(data: object, source: str) -> ImageData:
    """A data set function's result as training reads it, or a DataError naming what is wrong with it: images
    must be (N, H, W, C) uint8 with H, W >= MIN_IMAGE_SIZE and C 1 or 3, the test images of the training images'
    shape, labels one integer per image in 0..len(classes)-1 (any integer type: they are returned as int64)."""
    if not isinstance(data, ImageData):
        raise DataError(
            f"{source} returned a {type(data).__name__}, not a resnet9.data.datasets.ImageData; return "
            f"ImageData(train_images, train_labels, test_images, test_labels, classes=...)"
        )
    labels = {}
    for part in ("train", "test"):
        images = getattr(data, f"{part}_images")
        _check_images(images, f"{source}'s {part}_images")
        labels[f"{part}_labels"] = _checked_labels(
            getattr(data, f"{part}_labels"), len(images), len(data.classes), f"{source}'s {part}_labels"
        )
    train_shape, test_shape = data.train_images.shape[1:], data.test_images.shape[1:]
    if train_shape != test_shape:  # a model sized by one would be scored on the other
        raise DataError(
            f"{source}'s test_images are {_shown(test_shape)} but its train_images {_shown(train_shape)}; give "
            f"both sets the same height, width and channels"
        )
    return replace(data, **labels)


# ResNet9 halves the image three times: below 8 px a map would vanish.
MIN_IMAGE_SIZE = 8
SHAPE_HINT = f"(N, H, W, C): N > 0, height and width >= {MIN_IMAGE_SIZE}, then 1 (grey) or 3 (RGB) channels"


def _shown(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _check_images(images: object, what: str) -> None:
    if not isinstance(images, np.ndarray):
        raise DataError(f"{what} are a {type(images).__name__}; give a numpy array, {SHAPE_HINT}, uint8")
    if images.dtype != np.uint8:
        raise DataError(
            f"{what} are {images.dtype}; give uint8 pixels 0-255 (for floats in 0..1: "
            f"(images * 255).round().astype(np.uint8))"
        )
    fits = images.ndim == 4 and len(images) > 0 and min(images.shape[1:3]) >= MIN_IMAGE_SIZE
    if not (fits and images.shape[3] in (1, 3)):
        hint = ""
        if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
            hint = " (for channels first: images.transpose(0, 2, 3, 1))"
        elif images.ndim == 3:
            hint = " (for grey images without a channel axis: images[..., None])"
        raise DataError(f"{what} have the shape {images.shape}; give {SHAPE_HINT}{hint}")


def _checked_labels(labels: object, images: int, classes: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (images,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{what} are {labels.dtype} of shape {labels.shape}; give one integer label per image, shape ({images},)"
        )
    low, high = int(labels.min()), int(labels.max())  # images > 0: _check_images came first
    if low < 0 or high >= classes:
        raise DataError(
            f"{what} run from {low} to {high}, but the data set names {classes} classes (0..{classes - 1}); give "
            f"ImageData a name for each label in classes=..."
        )
    return labels.astype(np.int64, copy=False)


def cifar10(
    root: str | Path, download: bool = True, limit_train: int | None = None, limit_test: int | None = None
) -> ImageData:
    """CIFAR-10 under `root` (downloading it first if absent and allowed); optionally a class-balanced subset."""
    return _load(CIFAR10, root, download, limit_train, limit_test)


def cifar100(
    root: str | Path, download: bool = True, limit_train: int | None = None, limit_test: int | None = None
) -> ImageData:
    """CIFAR-100 with its 100 fine labels, as `cifar10` reads CIFAR-10."""
    return _load(CIFAR100, root, download, limit_train, limit_test)


load = cifar10  # the mission's data set, by its older name


def _load(
    layout: Layout, root: str | Path, download: bool, limit_train: int | None, limit_test: int | None
) -> ImageData:
    root = Path(root).expanduser()
    folder = root / layout.folder
    if not _is_folder(folder):
        if root.name == layout.folder and _is_folder(root):  # a common slip: the batches' own folder as the root
            raise DataError(
                f"data.root={root} is the folder of the batches itself; give the folder that holds it: "
                f"data.root={root.parent}"
            )
        if not download:
            raise DataError(
                f"{layout.name} not found: no folder {folder}; stage the official python batches there "
                f"or allow the download with data.download=true"
            )
        _download(layout, root)
    train = [_read_batch(layout, folder / name) for name in layout.train_files]
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    test_images, test_labels = _read_batch(layout, folder / layout.test_file)
    _check_class_counts(layout, folder, "training", train_labels, TRAIN_SIZE // layout.num_classes)
    _check_class_counts(layout, folder, "test", test_labels, TEST_SIZE // layout.num_classes)
    if limit_train is not None:
        keep = balanced_subset(train_labels, limit_train, layout.num_classes)
        train_images, train_labels = train_images[keep], train_labels[keep]
    if limit_test is not None:
        keep = balanced_subset(test_labels, limit_test, layout.num_classes)
        test_images, test_labels = test_images[keep], test_labels[keep]
    classes = CLASSES if layout is CIFAR10 else _class_names(folder / "meta", layout.num_classes)
    return ImageData(train_images, train_labels, test_images, test_labels, classes)


def balanced_subset(labels: np.ndarray, n: int, num_classes: int = NUM_CLASSES, seed: int = SUBSET_SEED) -> np.ndarray:
    """Indices of a fixed, class-balanced subset of `n` items, in their original order.

    Each class gets n // num_classes items (the first n % num_classes classes one more), drawn at random with
    `seed` — not the first n, since a staged test set may be sorted by class.
    """
    if not num_classes <= n <= len(labels):
        raise DataError(f"subset size {n} is out of range: use {num_classes}..{len(labels)} images")
    rng = np.random.default_rng(seed)
    picks = []
    for cls in range(num_classes):
        wanted = n // num_classes + (1 if cls < n % num_classes else 0)
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


def _download(layout: Layout, root: Path) -> None:
    """The official archive into `root`; on failure, the folders this created are removed again."""
    # Imported here: torchvision is only needed on the download path.
    from torchvision.datasets.utils import download_and_extract_archive

    created = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
    try:
        download_and_extract_archive(layout.url, download_root=str(root), md5=layout.md5)
    except Exception as err:  # network errors, checksum mismatch, disk full: all mean "stage it by hand"
        if created is not None and not (root / layout.folder).is_dir():  # no empty data folder left behind
            shutil.rmtree(created, ignore_errors=True)
        reason = first_line(err)
        raise DataError(
            f"{layout.name} not found in {root / layout.folder} and the download failed ({reason}); offline, unpack "
            f"{layout.archive} so that {root / layout.folder} exists, or pass the folder that holds "
            f'{layout.folder}/: data.root=<folder> (make train ARGS="data.root=<folder>")'
        ) from None


def _unpickled(layout: Layout, path: Path, fix: str) -> Any:
    """A file of the official layout, through the restricted unpickler."""
    if not path.is_file():
        raise DataError(f"{layout.name} batch missing: {path}; {fix}")
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, encoding="bytes").load()
    except _ForeignObject as err:
        what = f"asks to load {err}, which no {layout.name} batch holds"
        raise DataError(f"{layout.name} batch refused: {path} {what}; {fix}") from None
    except Exception as err:  # truncated or foreign files raise anything from EOFError to UnpicklingError
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise DataError(f"{layout.name} batch unreadable: {path} ({reason}); {fix}") from None


def _read_batch(layout: Layout, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official batch file -> (rows, 32, 32, 3) uint8 images, (rows,) int64 labels."""
    fix = f"re-stage it from the official {layout.archive}"
    batch = _unpickled(layout, path, fix)
    rows = (TRAIN_SIZE // len(layout.train_files)) if path.name in layout.train_files else TEST_SIZE
    key = layout.label_key
    if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
        raise DataError(f"{layout.name} batch malformed: {path} has no b'data'/{key!r} entries; {fix}")
    data, labels = batch[b"data"], np.asarray(batch[key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (rows, 3072):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(
            f"{layout.name} batch malformed: {path} data is {dtype} {shape}, expected uint8 ({rows}, 3072); {fix}"
        )
    if labels.shape != (rows,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{layout.name} batch malformed: {path} has labels of shape {labels.shape}; {fix}")
    if labels.min() < 0 or labels.max() >= layout.num_classes:
        raise DataError(
            f"{layout.name} batch malformed: {path} has labels in {labels.min()}..{labels.max()}, expected "
            f"0..{layout.num_classes - 1}; {fix}"
        )
    # Rows hold 1024 red, then 1024 green, then 1024 blue values; albumentations wants HWC.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64)


def _class_names(path: Path, count: int) -> tuple[str, ...]:
    """CIFAR-100's fine label names from its `meta` file (a file from disk: only a list of `count` names)."""
    meta = _unpickled(CIFAR100, path, "re-stage it from the official cifar-100-python.tar.gz")
    names = meta.get(b"fine_label_names") if isinstance(meta, dict) else None
    if not (isinstance(names, list) and len(names) == count and all(isinstance(n, bytes) for n in names)):
        raise DataError(f"CIFAR-100 meta malformed: {path} holds no list of {count} fine label names")
    return tuple(n.decode("utf-8", "replace")[:40] for n in names)


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


def _check_class_counts(layout: Layout, folder: Path, split: str, labels: np.ndarray, per_class: int) -> None:
    counts = np.bincount(labels, minlength=layout.num_classes)
    if (counts != per_class).any():
        shown = counts.tolist() if layout.num_classes <= 10 else f"{counts.min()}..{counts.max()}"
        raise DataError(
            f"{layout.name} {split} set in {folder} has {shown} images per class, expected {per_class} "
            f"each; re-stage it from the official {layout.archive}"
        )
