import json
import os
import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
from conftest import requires_real_data, synthetic_batch

from resnet9.data import datasets
from resnet9.data.datasets import DataError


def linked_copy(src_root: Path, dst_root: Path) -> Path:
    """dst_root/cifar-10-batches-py with symlinks to src's files; a test then replaces one of them."""
    folder = dst_root / datasets.BATCHES_DIR
    folder.mkdir(parents=True)
    for path in (src_root / datasets.BATCHES_DIR).iterdir():
        (folder / path.name).symlink_to(path)
    return folder


def linked_copy_of(src: Path, dst: Path) -> Path:
    """dst with symlinks to every file of src; a test then replaces one of them."""
    dst.mkdir(parents=True)
    for path in src.iterdir():
        (dst / path.name).symlink_to(path)
    return dst


def replace_batch(folder: Path, name: str, content: bytes) -> None:
    (folder / name).unlink()
    (folder / name).write_bytes(content)


def assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@requires_real_data
def test_real_staged_copy_loads_with_official_counts():
    from conftest import SHARED_CIFAR

    cifar = datasets.load(SHARED_CIFAR, download=False)
    assert cifar.train_images.shape == (50_000, 32, 32, 3) and cifar.train_images.dtype == np.uint8
    assert cifar.test_images.shape == (10_000, 32, 32, 3)
    assert np.bincount(cifar.train_labels).tolist() == [5000] * 10
    assert np.bincount(cifar.test_labels).tolist() == [1000] * 10
    # The official order of the first training labels (the staged README says so).
    assert cifar.train_labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    # Per-channel means as documented for this copy (official ones: 0.4914, 0.4822, 0.4465).
    means = cifar.train_images.reshape(-1, 3).mean(0) / 255
    assert np.allclose(means, [0.4913, 0.4821, 0.4465], atol=2e-3)


def test_loads_rows_as_hwc_images(synthetic_root):
    cifar = datasets.load(synthetic_root, download=False)
    with open(synthetic_root / datasets.BATCHES_DIR / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    # Row layout: 1024 red, 1024 green, 1024 blue, each row-major 32x32.
    assert cifar.test_images[0, 0, 1, 0] == raw[0, 1]
    assert cifar.test_images[0, 1, 0, 1] == raw[0, 1024 + 32]
    assert cifar.test_images[0, 31, 31, 2] == raw[0, 3071]


def test_subsets_are_balanced_fixed_and_not_the_first_n(synthetic_root):
    cifar = datasets.load(synthetic_root, download=False, limit_train=1000, limit_test=105)
    assert np.bincount(cifar.train_labels).tolist() == [100] * 10
    assert np.bincount(cifar.test_labels).tolist() == [11] * 5 + [10] * 5
    again = datasets.load(synthetic_root, download=False, limit_train=1000, limit_test=105)
    assert np.array_equal(cifar.train_images, again.train_images)
    # The synthetic test set is sorted by class, like the staged one: the first 105 would be all class 0.
    full = datasets.load(synthetic_root, download=False)
    keep = datasets.balanced_subset(full.test_labels, 105)
    assert np.all(np.diff(keep) > 0) and keep.max() > 9000


def test_subset_size_is_checked():
    with pytest.raises(DataError, match="out of range"):
        datasets.balanced_subset(np.repeat(np.arange(10), 5), 51)


def test_missing_folder_without_download_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as err:
        datasets.load(tmp_path / "nowhere", download=False)
    assert_one_line(err, str(tmp_path / "nowhere" / datasets.BATCHES_DIR), "data.download=true")


def test_failed_download_gives_one_line_and_leaves_no_folder_behind(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(url, download_root, **kwargs):
        Path(download_root).mkdir(parents=True)  # as torchvision does before it fetches
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as err:
        datasets.load(tmp_path / "new" / "data", download=True)
    assert_one_line(err, "download failed", "name resolution", "cifar-10-python.tar.gz", 'ARGS="data.root=<folder>"')
    assert list(tmp_path.iterdir()) == []  # the folders the attempt created are gone again


def test_the_batches_own_folder_as_the_root_is_answered_with_its_parent(synthetic_root):
    with pytest.raises(DataError) as err:
        datasets.cifar10(synthetic_root / "cifar-10-batches-py")
    assert_one_line(err, f"data.root={synthetic_root}/cifar-10-batches-py is the folder of the batches itself; give "
                         f"the folder that holds it: data.root={synthetic_root}")  # fmt: skip


def test_a_folder_we_may_not_read_is_one_line(tmp_path, monkeypatch):
    def refused(self):  # what stat() raises below a folder without execute permission (tests run as root here)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_dir", refused)
    with pytest.raises(DataError) as err:
        datasets.load(tmp_path, download=False)
    assert_one_line(err, f"cannot read {tmp_path / datasets.BATCHES_DIR} (Permission denied)", "data.root")


class RunsCode:
    """A crafted batch: unpickling it would call os.mkdir(marker), as any callable a pickle names is called."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_batch_that_names_code_is_refused_before_anything_runs(synthetic_root, tmp_path):
    folder = linked_copy(synthetic_root, tmp_path / "copy")
    marker = tmp_path / "ran"
    replace_batch(folder, "data_batch_1", pickle.dumps({b"data": RunsCode(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError) as err:
        datasets.load(tmp_path / "copy", download=False)
    assert_one_line(err, "batch refused", "posix.mkdir", "re-stage")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "unreadable"),  # empty file
        (b"\x80\x02}q\x00(U\x04data", "unreadable"),  # truncated pickle
        (pickle.dumps([1, 2, 3], protocol=2), "no b'data'/b'labels'"),
        (pickle.dumps({b"data": np.zeros((10000, 1024), np.uint8), b"labels": [0] * 10000}), "expected uint8"),
        (pickle.dumps({b"data": np.zeros((10000, 3072), np.float32), b"labels": [0] * 10000}), "expected uint8"),
        (pickle.dumps({b"data": np.zeros((10000, 3072), np.uint8), b"labels": [11] * 10000}), "expected 0..9"),
    ],
    ids=["empty", "truncated", "not-a-dict", "wrong-shape", "wrong-dtype", "bad-labels"],
)
def test_corrupt_batches_give_one_line_naming_the_file(synthetic_root, tmp_path, content, fragment):
    folder = linked_copy(synthetic_root, tmp_path)
    replace_batch(folder, "data_batch_3", content)
    with pytest.raises(DataError) as err:
        datasets.load(tmp_path, download=False)
    assert_one_line(err, str(folder / "data_batch_3"), fragment, "re-stage")


def test_missing_batch_is_named(synthetic_root, tmp_path):
    folder = linked_copy(synthetic_root, tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError) as err:
        datasets.load(tmp_path, download=False)
    assert_one_line(err, "batch missing", str(folder / "test_batch"))


def test_wrong_class_counts_are_refused(synthetic_root, tmp_path):
    folder = linked_copy(synthetic_root, tmp_path)
    labels = np.zeros(10000, dtype=np.int64)  # a test set of one class
    replace_batch(folder, "test_batch", pickle.dumps(synthetic_batch(labels, np.random.default_rng(0)), protocol=2))
    with pytest.raises(DataError) as err:
        datasets.load(tmp_path, download=False)
    assert_one_line(err, "test set", "[10000, 0, 0", "expected 1000 each")


def write_synthetic_cifar100(root: Path, seed: int = 0) -> Path:
    """CIFAR-100's official layout (train, test, meta; 100 fine labels), each class a colour plus noise."""
    rng = np.random.default_rng(seed)
    folder = root / datasets.CIFAR100.folder
    folder.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(0, 256, (100, 3)).astype(np.int16)
    for name, per_class in (("train", 500), ("test", 100)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class))
        noise = rng.integers(-30, 31, (len(labels), 3, 1024), dtype=np.int16)
        rows = np.clip(colours[labels][:, :, None] + noise, 0, 255).astype(np.uint8).reshape(len(labels), 3072)
        batch = {b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(), b"data": rows}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"kind{i}".encode() for i in range(100)]}, f, protocol=2)
    return root


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory) -> Path:
    return write_synthetic_cifar100(tmp_path_factory.mktemp("cifar100"))


def test_cifar100_loads_its_fine_labels_and_names_and_subsets_by_class(cifar100_root):
    full = datasets.cifar100(cifar100_root, download=False)
    assert full.train_images.shape == (50_000, 32, 32, 3) and full.test_images.shape == (10_000, 32, 32, 3)
    assert np.bincount(full.train_labels).tolist() == [500] * 100 and full.classes[7] == "kind7"
    subset = datasets.cifar100(cifar100_root, download=False, limit_train=1000, limit_test=250)
    assert np.bincount(subset.train_labels).tolist() == [10] * 100
    assert np.bincount(subset.test_labels, minlength=100).tolist() == [3] * 50 + [2] * 50


def test_a_damaged_cifar100_is_one_line(cifar100_root, tmp_path):
    folder = linked_copy_of(cifar100_root / datasets.CIFAR100.folder, tmp_path / datasets.CIFAR100.folder)
    replace_batch(folder, "meta", pickle.dumps({b"fine_label_names": [b"x"] * 3}, protocol=2))
    with pytest.raises(DataError) as err:
        datasets.cifar100(tmp_path, download=False)
    assert_one_line(err, "CIFAR-100 meta malformed", "holds no list of 100 fine label names")
    replace_batch(folder, "test", pickle.dumps({b"labels": [0], b"data": np.zeros((1, 3072), np.uint8)}, protocol=2))
    with pytest.raises(DataError) as err:
        datasets.cifar100(tmp_path, download=False)
    assert_one_line(err, "CIFAR-100 batch malformed", "no b'data'/b'fine_labels' entries", "cifar-100-python.tar.gz")
    with pytest.raises(DataError) as err:
        datasets.cifar100(tmp_path / "elsewhere", download=False)
    assert_one_line(err, "CIFAR-100 not found: no folder", "cifar-100-python")


def test_data_cifar100_trains_a_100_class_model(cifar100_root, tmp_path):
    from hydra import compose, initialize_config_dir

    from resnet9.train import train

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "data=cifar100", f"data.root={cifar100_root}", "data.limit_train=2000", "data.limit_test=500",
            "model.width=0.125", "batch_size=100", "epochs=2", "optimizer.lr=0.2", "scheduler.lr_min=0.02",
            "logger=none", "progress=false", "device=cpu", "data.num_workers=0"])  # fmt: skip
    assert cfg.model.num_classes == 100  # it follows the data set
    accuracy = train(cfg, tmp_path)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["classes"][:2] == ["kind0", "kind1"] and len(record["classes"]) == 100
    assert accuracy > 0.05  # five times chance after 40 steps on colours
    assert record["config"]["data"]["mean"] == [0.5071, 0.4865, 0.4409]


def small_image_data(**changes) -> datasets.ImageData:
    rng = np.random.default_rng(0)
    parts = {
        "train_images": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        "train_labels": np.arange(8) % 2,
        "test_images": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
        "test_labels": np.arange(4) % 2,
    }
    return datasets.ImageData(**(parts | changes), classes=("a", "b"))


def test_a_data_sets_int32_labels_are_read_as_int64_and_its_images_left_as_they_are():
    given = small_image_data(train_labels=(np.arange(8) % 2).astype(np.int32))
    data = datasets.checked(given, "mine.pairs")
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    assert data.train_images is given.train_images and (data.train_labels == given.train_labels).all()


WRONG_ARRAYS = [
    ({"train_images": np.zeros((8, 32, 32, 3), np.float32)}, "mine.pairs's train_images are float32; give uint8"),
    ({"test_images": np.zeros((4, 3, 32, 32), np.uint8)}, "mine.pairs's test_images have the shape (4, 3, 32, 32)"),
    ({"train_images": np.zeros((0, 32, 32, 3), np.uint8), "train_labels": np.zeros(0, np.int64)}, "N > 0"),
    ({"train_labels": np.arange(8)}, "mine.pairs's train_labels run from 0 to 7, but the data set names 2 classes"),
    ({"test_labels": np.full(4, -1)}, "mine.pairs's test_labels run from -1 to -1"),
    ({"train_labels": np.zeros(8, np.float64)}, "train_labels are float64 of shape (8,); give one integer label"),
    ({"test_labels": np.zeros(5, np.int64)}, "test_labels are int64 of shape (5,); give one integer label per image"),
    ({"train_images": [[0] * 3] * 8}, "mine.pairs's train_images are a list; give a numpy array"),
]


@pytest.mark.parametrize("changes, fragment", WRONG_ARRAYS, ids=[f for _, f in WRONG_ARRAYS])
def test_a_data_set_of_the_wrong_arrays_is_one_line_naming_the_array_and_the_fix(changes, fragment):
    with pytest.raises(DataError) as err:
        datasets.checked(small_image_data(**changes), "mine.pairs")
    assert_one_line(err, fragment)


def float_images(root: str, **options) -> datasets.ImageData:
    """A user's data set function that returns CIFAR's images as floats in 0..1 (the `_target_` of a test)."""
    data = datasets.cifar10(root, **options)
    return datasets.ImageData(data.train_images / 255, data.train_labels, data.test_images / 255, data.test_labels)


def test_a_run_on_a_data_set_of_float_images_is_refused_before_training(synthetic_root, tmp_path):
    """Float pixels would train to chance without a word (the augmentation and normalisation expect 0..255)."""
    from hydra import compose, initialize_config_dir

    from resnet9.core.errors import UsageError
    from resnet9.train import train

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "data._target_=test_data.float_images", f"data.root={synthetic_root}", "model.width=0.125",
            "batch_size=50", "epochs=2", "optimizer.lr=0.1", "scheduler.lr_min=0.01", "logger=none",
            "device=cpu"])  # fmt: skip
    with pytest.raises(UsageError, match=r"^test_data.float_images's train_images are float64; give uint8"):
        train(cfg, tmp_path)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("shape", [(64, 64, 3), (96, 96, 3), (28, 28, 1), (48, 64, 3), (8, 8, 1)])
def test_a_data_set_of_any_size_from_8px_with_one_or_three_channels_is_accepted(shape):
    rng = np.random.default_rng(0)
    given = small_image_data(train_images=rng.integers(0, 256, (8, *shape), dtype=np.uint8),
                             test_images=rng.integers(0, 256, (4, *shape), dtype=np.uint8))  # fmt: skip
    assert datasets.checked(given, "mine.pairs").image_shape == shape


WRONG_SHAPES = [
    ({"train_images": np.zeros((8, 7, 32, 3), np.uint8)}, "train_images have the shape (8, 7, 32, 3); give (N, H, W, C)"
     ": N > 0, height and width >= 8, then 1 (grey) or 3 (RGB) channels"),
    ({"train_images": np.zeros((8, 32, 32, 2), np.uint8)}, "train_images have the shape (8, 32, 32, 2); give"),
    ({"test_images": np.zeros((4, 28, 28), np.uint8)}, "(for grey images without a channel axis: images[..., None])"),
    ({"test_images": np.zeros((4, 1, 28, 28), np.uint8)}, "(for channels first: images.transpose(0, 2, 3, 1))"),
    ({"test_images": np.zeros((4, 64, 64, 3), np.uint8)}, "mine.pairs's test_images are 64x64x3 but its train_images "
     "32x32x3; give both sets the same height, width and channels"),
    ({"test_images": np.zeros((4, 32, 32, 1), np.uint8)}, "test_images are 32x32x1 but its train_images 32x32x3"),
]  # fmt: skip


@pytest.mark.parametrize("changes, fragment", WRONG_SHAPES, ids=[f[:60] for _, f in WRONG_SHAPES])
def test_a_data_set_of_the_wrong_shapes_is_one_line_naming_the_array_and_the_fix(changes, fragment):
    with pytest.raises(DataError) as err:
        datasets.checked(small_image_data(**changes), "mine.pairs")
    assert_one_line(err, fragment)
