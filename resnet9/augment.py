"""The mission's augmentation with albumentations, and the Dataset/DataLoader that applies it.

Train: reflect-pad 4 -> random 32x32 crop -> horizontal flip (p=0.5) -> normalize -> Cutout 8x8.
Test:  normalize only.

Choices, following David Page's recipe for this network:
- Padding is reflection without repeating the edge pixel (OpenCV BORDER_REFLECT_101, numpy "reflect"), so a
  crop never shows an artificial black border. Crop offsets are uniform in -pad..+pad on each axis.
- Cutout is one 8x8 square placed uniformly so that it lies *fully inside* the 32x32 image (albumentations
  2.x CoarseDropout draws its top-left corner in 0..H-h). It is applied after normalization with fill 0,
  i.e. the hole holds the dataset mean — the network sees "no information" there, not black.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

# Per-channel mean and std of the official CIFAR-10 training images, on the 0..1 scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SIZE = 32


def _normalize() -> A.Normalize:
    return A.Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD, max_pixel_value=255.0)


def train_transform(pad: int = 4, flip: bool = True, cutout: int = 8, seed: int | None = None) -> A.Compose:
    """The training pipeline; `pad=0`, `flip=False`, `cutout=0` switch each part off."""
    steps: list[A.BasicTransform] = []
    if pad > 0:
        size = IMAGE_SIZE + 2 * pad
        steps += [
            A.PadIfNeeded(size, size, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(IMAGE_SIZE, IMAGE_SIZE),
        ]
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps.append(_normalize())
    if cutout > 0:
        steps.append(
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(cutout, cutout),
                hole_width_range=(cutout, cutout),
                fill=0.0,
                p=1.0,
            )
        )
    return A.Compose(steps, seed=seed)


def test_transform() -> A.Compose:
    """Deterministic: normalization only."""
    return A.Compose([_normalize()])


class AugmentedImages(Dataset):
    """uint8 HWC images + labels -> (float32 CHW tensor, int label), through an albumentations pipeline."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.Compose) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.transform(image=self.images[index])["image"]
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), int(self.labels[index])


def _reseed_worker(worker_id: int) -> None:
    # albumentations keeps its own random state, copied into every worker: without this each worker would
    # produce the same augmentations. torch gives each worker a seed derived from the loader's generator,
    # so this stays deterministic for a fixed run seed while differing between workers and epochs.
    info = get_worker_info()
    info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


def make_loader(
    images: np.ndarray,
    labels: np.ndarray,
    transform: A.Compose,
    batch_size: int,
    train: bool,
    seed: int,
    num_workers: int = 0,
) -> DataLoader:
    """Shuffled, drop_last loader for training (every step a full batch); ordered loader for evaluation."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        AugmentedImages(images, labels, transform),
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=num_workers,
        worker_init_fn=_reseed_worker if num_workers > 0 else None,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )
