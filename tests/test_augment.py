from collections import Counter

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from resnet9 import augment

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


def crop_offset(out: np.ndarray, padded: np.ndarray) -> tuple[int, int] | None:
    """The (dy, dx) in -4..4 for which `out` is the crop of the reflect-padded image, if any."""
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            if np.allclose(out, padded[4 + dy : 36 + dy, 4 + dx : 36 + dx], atol=1e-5):
                return dy, dx
    return None


def test_crop_offsets_are_uniform_shifts_within_4px_of_reflect_padding(image):
    transform = augment.train_transform(pad=4, flip=False, cutout=0, seed=0)
    padded = normalized(np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect"))
    offsets = Counter(crop_offset(apply(transform, image), padded) for _ in range(N))
    assert None not in offsets  # every output is a ±4 px shift of the reflect-padded image
    assert len(offsets) == 81  # all 9 x 9 shifts occur...
    expected = N / 81
    assert max(offsets.values()) < 2 * expected and min(offsets.values()) > expected / 3  # ...about equally


def test_flip_happens_about_half_the_time(image):
    transform = augment.train_transform(pad=0, flip=True, cutout=0, seed=0)
    plain, mirrored = normalized(image), normalized(image[:, ::-1])
    outcomes = Counter()
    for _ in range(N):
        out = apply(transform, image)
        outcomes["flip" if np.allclose(out, mirrored) else "same" if np.allclose(out, plain) else "other"] += 1
    assert outcomes["other"] == 0
    assert 0.45 < outcomes["flip"] / N < 0.55  # 5 sigma of a fair coin over 2000 draws is ±0.056


def test_cutout_is_one_8x8_square_fully_inside_holding_the_mean(image):
    transform = augment.train_transform(pad=0, flip=False, cutout=8, seed=0)
    corners = Counter()
    for _ in range(N):
        out = apply(transform, image)
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


def test_full_pipeline_output_and_exactly_one_cutout(image):
    transform = instantiate(OmegaConf.load("conf/augment/cutout.yaml"), seed=0)
    for _ in range(200):
        out = apply(transform, image)
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        assert np.all(out == 0, axis=2).sum() == 64


def test_none_option_only_normalizes(image):
    transform = instantiate(OmegaConf.load("conf/augment/none.yaml"), seed=0)
    assert np.allclose(apply(transform, image), normalized(image), atol=1e-5)


def test_test_transform_is_deterministic_normalization(image):
    transform = augment.test_transform()
    first = apply(transform, image)
    assert np.allclose(first, normalized(image), atol=1e-5)
    assert all(np.array_equal(first, apply(transform, image)) for _ in range(20))


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
