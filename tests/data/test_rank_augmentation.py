"""Under torchrun the albumentations engine seeds each rank's augmentation apart: ranks do not repeat each other's
draws. Every image here is the same image, so two slices differ only where their augmentations do."""

import numpy as np
import pytest
import torch

from resnet9.data import augment

CPU = torch.device("cpu")


def first_batch(rank: int, workers: int) -> torch.Tensor:
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    images, labels = np.repeat(image[None], 80, axis=0), np.zeros(80, dtype=np.int64)
    spec = augment.Augmentation(engine="albumentations")
    loader = spec.train_loader(images, labels, 40, CPU, seed=0, num_workers=workers, rank=rank, world_size=2)
    return next(iter(loader))[0]


@pytest.mark.parametrize("workers", [0, 1])
def test_the_albumentations_engine_draws_other_augmentations_on_each_rank(workers):
    rank0, rank1 = first_batch(0, workers), first_batch(1, workers)
    assert torch.equal(rank0, first_batch(0, workers))  # the same rank draws the same again...
    assert rank0.shape == rank1.shape == (20, 3, 32, 32)
    assert not any(torch.equal(rank0[i], rank1[i]) for i in range(20))  # ...the other rank draws its own
