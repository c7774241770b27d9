from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from resnet9.core.errors import ConfigError
from resnet9.data import augment

MEAN = np.array(augment.CIFAR10_MEAN, dtype=np.float32)
STD = np.array(augment.CIFAR10_STD, dtype=np.float32)
N = 2000


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    # Random pixels: every 8x8 window is unique, and no pixel equals the mean (mean * 255 is not an integer),
    # so a normalized value of exactly 0 can only come from Cutout.
    return np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)


def normalized(img: np.ndarray) -> np.ndarray:
    return (img.astype(np.float32) / 255 - MEAN) / STD


def apply(transform, img: np.ndarray) -> np.ndarray:
    return transform(image=img)["image"]


ENGINES = ["albumentations", "device"]


def draw(engine: str, img: np.ndarray, n: int = N, seed: int = 0, **settings) -> np.ndarray:
    """n independent augmentations of one image through `engine`, as (n, 32, 32, 3) float arrays."""
    if engine == "albumentations":
        transform = augment.train_transform(seed=seed, **settings)
        return np.stack([apply(transform, img) for _ in range(n)])
    copies = np.repeat(img[None], n, axis=0)
    loader = augment.DeviceLoader(copies, np.zeros(n, np.int64), n, torch.device("cpu"), train=True, seed=seed,
                                  **settings)  # fmt: skip
    (batch, _labels) = next(iter(loader))
    return batch.numpy().transpose(0, 2, 3, 1)


def crop_offset(out: np.ndarray, padded: np.ndarray) -> tuple[int, int] | None:
    """The (dy, dx) in -4..4 for which `out` is the crop of the reflect-padded image, if any."""
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            if np.allclose(out, padded[4 + dy : 36 + dy, 4 + dx : 36 + dx], atol=1e-5):
                return dy, dx
    return None


@pytest.mark.parametrize("engine", ENGINES)
def test_crop_offsets_are_uniform_shifts_within_4px_of_reflect_padding(image, engine):
    padded = normalized(np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect"))
    offsets = Counter(crop_offset(out, padded) for out in draw(engine, image, pad=4, flip=False, cutout=0))
    assert None not in offsets  # every output is a ±4 px shift of the reflect-padded image
    assert len(offsets) == 81  # all 9 x 9 shifts occur...
    expected = N / 81
    assert max(offsets.values()) < 2 * expected and min(offsets.values()) > expected / 3  # ...about equally


@pytest.mark.parametrize("engine", ENGINES)
def test_flip_happens_about_half_the_time(image, engine):
    plain, mirrored = normalized(image), normalized(image[:, ::-1])
    outcomes = Counter()
    for out in draw(engine, image, pad=0, flip=True, cutout=0):
        outcomes["flip" if np.allclose(out, mirrored) else "same" if np.allclose(out, plain) else "other"] += 1
    assert outcomes["other"] == 0
    assert 0.45 < outcomes["flip"] / N < 0.55  # 5 sigma of a fair coin over 2000 draws is ±0.056


@pytest.mark.parametrize("engine", ENGINES)
def test_cutout_is_one_8x8_square_fully_inside_holding_the_mean(image, engine):
    corners = Counter()
    for out in draw(engine, image, pad=0, flip=False, cutout=8):
        zero = np.all(out == 0, axis=2)
        assert zero.sum() == 64
        ys, xs = np.nonzero(zero)
        top, left = ys.min(), xs.min()
        assert (ys.max() - top, xs.max() - left) == (7, 7)  # one solid 8x8 square
        assert 0 <= top <= 24 and 0 <= left <= 24  # fully inside the image
        keep = ~zero
        assert np.allclose(out[keep], normalized(image)[keep], atol=1e-5)  # the rest untouched
        corners[top, left] += 1
    assert len(corners) > 0.9 * 25 * 25  # placement spreads over the 25 x 25 possible corners


@pytest.mark.parametrize("engine", ENGINES)
def test_full_pipeline_output_and_exactly_one_cutout(image, engine):
    spec = OmegaConf.load("conf/augment/cutout.yaml")
    outs = draw(engine, image, n=200, pad=spec.pad, flip=spec.flip, cutout=spec.cutout)
    assert outs.shape == (200, 32, 32, 3) and outs.dtype == np.float32
    assert all(np.all(out == 0, axis=2).sum() == 64 for out in outs)


@pytest.mark.parametrize("engine", ENGINES)
def test_none_option_only_normalizes(image, engine):
    spec = OmegaConf.load("conf/augment/none.yaml")
    outs = draw(engine, image, n=5, pad=spec.pad, flip=spec.flip, cutout=spec.cutout)
    assert np.allclose(outs, normalized(image)[None], atol=1e-5)


def test_test_transform_is_deterministic_normalization(image):
    transform = augment.test_transform()
    first = apply(transform, image)
    assert np.allclose(first, normalized(image), atol=1e-5)
    assert all(np.array_equal(first, apply(transform, image)) for _ in range(20))


@pytest.mark.parametrize("engine", ENGINES)
def test_both_engines_normalize_test_images_identically(image, engine):
    spec = instantiate(OmegaConf.merge(OmegaConf.load("conf/augment/cutout.yaml"), {"engine": engine}))
    images = np.stack([image, image[::-1]])
    loader = spec.test_loader(images, np.array([3, 5]), batch_size=1, device=torch.device("cpu"))
    batches = list(loader)
    assert len(batches) == 2  # evaluation keeps every image, in order
    got = np.concatenate([b.numpy() for b, _ in batches]).transpose(0, 2, 3, 1)
    assert np.allclose(got, normalized(images), atol=1e-5)  # no augmentation at test time
    assert [int(y) for _, labels in batches for y in labels] == [3, 5]


def test_device_loader_epochs_cover_the_data_once_and_differ():
    images = np.arange(10 * 32 * 32 * 3, dtype=np.int64).reshape(10, 32, 32, 3).astype(np.uint8)
    labels = np.arange(10)
    loader = augment.DeviceLoader(images, labels, 4, torch.device("cpu"), train=True, pad=4, flip=True, cutout=8)
    assert len(loader) == 2  # drop_last: 10 // 4
    first = [y for _, batch_labels in loader for y in batch_labels.tolist()]
    second = [y for _, batch_labels in loader for y in batch_labels.tolist()]
    assert len(set(first)) == 8 and first != second  # a new permutation each epoch


def test_device_loader_repeats_for_a_seed():
    image = np.random.default_rng(0).integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)

    def epoch(seed: int) -> torch.Tensor:
        loader = augment.DeviceLoader(image, np.zeros(64, np.int64), 16, torch.device("cpu"), train=True,
                                      pad=4, flip=True, cutout=8, seed=seed)  # fmt: skip
        return torch.cat([batch for batch, _ in loader])

    assert torch.equal(epoch(1), epoch(1)) and not torch.equal(epoch(1), epoch(2))


def test_seeded_pipelines_repeat_and_differ_by_seed(image):
    def draws(seed: int) -> list[np.ndarray]:
        transform = augment.train_transform(seed=seed)
        return [apply(transform, image) for _ in range(5)]

    assert all(np.array_equal(a, b) for a, b in zip(draws(3), draws(3), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(draws(3), draws(4), strict=True))


def test_loader_workers_draw_different_augmentations(image):
    # Copies of one image: with un-reseeded workers, both workers would produce identical batches.
    images = np.repeat(image[None], 8, axis=0)
    loader = augment.make_loader(
        images, np.zeros(8, dtype=np.int64), augment.train_transform(seed=0),
        batch_size=4, train=True, seed=0, num_workers=2,
    )  # fmt: skip
    (first, _), (second, _) = list(loader)
    assert first.shape == (4, 3, 32, 32) and first.dtype == torch.float32
    assert not torch.equal(first, second)
    again = [batch for batch, _ in loader]  # next epoch: fresh worker seeds, new augmentations
    assert not torch.equal(again[0], first)


@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 2)])
def test_a_whole_epoch_at_once_gives_the_batch_by_batch_batches_bit_for_bit(rank, world_size):
    """Two epochs, every batch; then a resume in the middle of an epoch (the skipped batches still draw)."""
    rng = np.random.default_rng(4)
    images, labels = rng.integers(0, 256, (230, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 230)

    def loader(whole_epoch: bool) -> augment.DeviceLoader:
        return augment.DeviceLoader(images, labels, 50, torch.device("cpu"), train=True, pad=4, flip=True, cutout=8,
                                    seed=7, rank=rank, world_size=world_size, whole_epoch=whole_epoch)  # fmt: skip

    batch_by_batch, at_once = loader(False), loader(True)
    for _ in range(2):
        pairs = list(zip(batch_by_batch, at_once, strict=True))
        assert len(pairs) == 4  # 230 // 50, the partial batch dropped
        for (images_a, labels_a), (images_b, labels_b) in pairs:
            assert images_a.shape == (50 // world_size, 3, 32, 32)
            assert torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)
    resumed = loader(True)
    resumed.load_state_dict({**batch_by_batch.state_dict(), "batches_done": 2})
    reference = loader(False)
    reference.load_state_dict({**batch_by_batch.state_dict(), "batches_done": 2})
    for (images_a, _), (images_b, _) in zip(reference, resumed, strict=True):
        assert torch.equal(images_a, images_b)


def test_the_yaml_pipeline_option_draws_exactly_what_the_reference_engine_draws():
    """conf/augment/albumentations.yaml writes the mission's pipeline out as albumentations transforms: built by
    Hydra from YAML, it must give the reference engine's batches bit for bit (same draws, same order)."""
    conf = Path(__file__).resolve().parents[2] / "conf" / "augment"
    pipeline = instantiate(OmegaConf.load(conf / "albumentations.yaml"))
    reference = instantiate(OmegaConf.load(conf / "cutout.yaml"), engine="albumentations")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), np.arange(64) % 10
    for stats in (augment.CIFAR10_STATS, ((0.5, 0.4, 0.3), (0.2, 0.3, 0.25))):  # any data set's normalisation
        loaders = [p.train_loader(images, labels, 16, torch.device("cpu"), seed=3, stats=stats)
                   for p in (pipeline, reference)]  # fmt: skip
        for _ in range(2):  # two epochs
            for (a, la), (b, lb) in zip(*loaders, strict=True):
                assert torch.equal(a, b) and torch.equal(la, lb)
        tests = [p.test_loader(images, labels, 32, torch.device("cpu"), stats=stats) for p in (pipeline, reference)]
        for (a, _), (b, _) in zip(*tests, strict=True):
            assert torch.equal(a, b)
    (batch, _), *_ = loaders[0]
    assert (batch == 0).all(dim=1).flatten(1).sum(1).eq(64).all()  # one 8x8 hole, filled with the mean, per image


# Any image size and grey images: a non-square RGB image (rows and columns told apart) and a one-channel one.
SIZED = {"48x64 RGB": ((48, 64, 3), augment.CIFAR10_STATS), "28x28 grey": ((28, 28, 1), ((0.4751,), (0.2345,)))}


def draw_sized(engine: str, img: np.ndarray, stats: augment.Stats, n: int, **settings) -> np.ndarray:
    """`draw` for images of any shape and normalisation: (n, H, W, C) float arrays."""
    if engine == "albumentations":
        transform = augment.train_transform(seed=0, stats=stats, size=img.shape[:2], **settings)
        return np.stack([apply(transform, img) for _ in range(n)])
    copies = np.repeat(img[None], n, axis=0)
    loader = augment.DeviceLoader(copies, np.zeros(n, np.int64), n, torch.device("cpu"), train=True, stats=stats,
                                  **settings)  # fmt: skip
    return next(iter(loader))[0].numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("sized", SIZED)
@pytest.mark.parametrize("engine", ENGINES)
def test_both_engines_crop_and_cut_out_any_image_size_and_grey_images(engine, sized):
    """Crop offsets uniform over every ±pad shift of the reflect-padded image, and one cutout x cutout square
    fully inside, placed anywhere it fits: the same pipeline as at 32 px, sized by the image."""
    shape, stats = SIZED[sized]
    img = np.random.default_rng(2).integers(0, 256, size=shape, dtype=np.uint8)
    height, width, _ = shape
    mean, std = np.array(stats[0], np.float32), np.array(stats[1], np.float32)
    padded = (np.pad(img, ((2, 2), (2, 2), (0, 0)), mode="reflect").astype(np.float32) / 255 - mean) / std
    shifts = Counter()
    for out in draw_sized(engine, img, stats, 500, pad=2, flip=False, cutout=0):
        assert out.shape == shape
        shifts.update(
            (dy, dx) for dy in range(5) for dx in range(5)
            if np.allclose(out, padded[dy : dy + height, dx : dx + width], atol=1e-5)
        )  # fmt: skip
    assert sum(shifts.values()) == 500 and len(shifts) == 25  # each output one shift; all 5 x 5 of them occur
    corners = Counter()
    for out in draw_sized(engine, img, stats, 500, pad=0, flip=False, cutout=12):
        ys, xs = np.nonzero(np.all(out == 0, axis=2))
        assert len(ys) == 144 and (ys.max() - ys.min(), xs.max() - xs.min()) == (11, 11)
        corners[ys.min(), xs.min()] += 1
    rows, cols = zip(*corners, strict=True)
    assert max(rows) <= height - 12 and max(cols) <= width - 12  # fully inside
    assert max(rows) >= height - 14 and max(cols) >= width - 14 and min(rows) <= 2 and min(cols) <= 2  # anywhere


@pytest.mark.parametrize("engine", ENGINES)
def test_sizes_that_do_not_fit_the_images_are_one_line_naming_the_key(engine):
    images, labels = np.zeros((8, 28, 28, 1), np.uint8), np.zeros(8, np.int64)
    grey = ((0.5,), (0.25,))
    cases = [
        (augment.Augmentation(cutout=30, engine=engine), grey, "augment.cutout=30 is larger than the 28x28 images; "
         "use at most 28 (a quarter of the side is CIFAR's proportion: augment.cutout=7)"),
        (augment.Augmentation(pad=28, engine=engine), grey, "augment.pad=28 does not fit the 28x28 images; use at "
         "most 27 (an eighth of the side is CIFAR's proportion: augment.pad=3)"),
        (augment.Augmentation(engine=engine), augment.CIFAR10_STATS, "data.mean and data.std give 3 and 3 values for "
         "images of 1 channel(s); give one mean and one std per channel"),
    ]  # fmt: skip
    for option, stats, line in cases:
        with pytest.raises(ConfigError) as err:
            option.train_loader(images, labels, 4, torch.device("cpu"), seed=0, stats=stats)
        assert str(err.value) == line


def test_a_yaml_pipeline_that_resizes_the_images_is_one_warning_line(caplog):
    """conf/augment/albumentations.yaml crops 32x32: on 64x64 images it would train on crops and test on whole
    images. One line says so. (The check runs a copy of the pipeline: its draws stay the reference engine's,
    test_the_yaml_pipeline_option_draws_exactly_what_the_reference_engine_draws.)"""
    conf = Path(__file__).resolve().parents[2] / "conf" / "augment"
    pipeline = instantiate(OmegaConf.load(conf / "albumentations.yaml"))
    images = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    with caplog.at_level("WARNING", logger="resnet9"):
        pipeline.train_loader(images, np.zeros(8, np.int64), 4, torch.device("cpu"), seed=3)
        (record,) = caplog.records
        assert record.getMessage() == (
            "augment.train turns the data's 64x64x3 images into 32x32x3 ones, but the test images stay 64x64x3; "
            "write the pipeline's sizes for the data (e.g. PadIfNeeded 72x72, RandomCrop 64x64)"
        )
        caplog.clear()
        pipeline.train_loader(images[:, :32, :32], np.zeros(8, np.int64), 4, torch.device("cpu"), seed=3)
        assert not caplog.records  # the size it is written for: nothing to say
