"""The mission's augmentation, in two engines that draw from the same distribution.

Train: reflect-pad 4 -> random crop back to the image's size -> horizontal flip (p=0.5) -> normalize -> Cutout 8x8.
Test:  normalize only.
Any image size and 1 or 3 channels: `pad` and `cutout` are pixels (4 and 8: CIFAR's at 32 px, an eighth and a
quarter of the side; e.g. 8 and 16 keep those proportions at 64 px).

- `albumentations` (the reference): per-image albumentations pipelines in DataLoader workers.
- `device` (the fast path, `DeviceLoader`): the whole uint8 dataset lives on the training device; each epoch
  draws one permutation and augments a whole batch at once with tensor operations, per-sample random. No
  worker processes, no host-to-device copies, nothing left for a GPU to wait on.
The tests run the same statistical checks on both (crop offsets, flip rate, cutout size and placement,
normalization). `engine: auto` picks `device`; see the README for the measured difference.

Choices, following David Page's recipe for this network:
- Padding is reflection without repeating the edge pixel (OpenCV BORDER_REFLECT_101, numpy "reflect"), so a
  crop never shows an artificial black border. Crop offsets are uniform in -pad..+pad on each axis.
- Cutout is one 8x8 square placed uniformly so that it lies *fully inside* the image (albumentations
  2.x CoarseDropout draws its top-left corner in 0..H-h). It is applied after normalization with fill 0,
  i.e. the hole holds the dataset mean — the network sees "no information" there, not black.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, get_worker_info

from resnet9.core.errors import ConfigError

# Per-channel mean and std of the official CIFAR-10 training images, on the 0..1 scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# (mean, std) per channel on the 0..1 scale: each data option's `data.mean`/`data.std` (conf/data/*.yaml).
Stats = tuple[tuple[float, ...], tuple[float, ...]]
CIFAR10_STATS: Stats = (CIFAR10_MEAN, CIFAR10_STD)


def _normalize(stats: Stats = CIFAR10_STATS) -> A.Normalize:
    return A.Normalize(mean=stats[0], std=stats[1], max_pixel_value=255.0)


def train_transform(
    pad: int = 4,
    flip: bool = True,
    cutout: int = 8,
    seed: int | None = None,
    stats: Stats = CIFAR10_STATS,
    size: tuple[int, int] = (32, 32),
) -> A.Compose:
    """The training pipeline for images of `size` (height, width); `pad=0`, `flip=False`, `cutout=0` switch each
    part off."""
    steps: list[A.BasicTransform] = []
    if pad > 0:
        height, width = size
        steps += [
            A.PadIfNeeded(height + 2 * pad, width + 2 * pad, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(height, width),
        ]
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps.append(_normalize(stats))
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


def test_transform(stats: Stats = CIFAR10_STATS) -> A.Compose:
    """Deterministic: normalization only."""
    return A.Compose([_normalize(stats)])


def normalize_images(images: np.ndarray, stats: Stats = CIFAR10_STATS) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W), normalized exactly like the test images."""
    normalize = test_transform(stats)
    return torch.from_numpy(np.stack([normalize(image=image)["image"] for image in images]).transpose(0, 3, 1, 2))


class AugmentedImages(Dataset):
    """uint8 HWC images + labels -> (float32 CHW tensor, int label), through an albumentations pipeline."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.Compose, rank: int = 0) -> None:
        self.images, self.labels, self.transform, self.rank = images, labels, transform, rank

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.transform(image=self.images[index])["image"]
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), int(self.labels[index])


# Added to a data-parallel rank's augmentation seeds so that ranks do not repeat each other's draws.
RANK_SEED_STRIDE = 1_000_003


def _reseed_worker(worker_id: int) -> None:
    # albumentations keeps its own random state, copied into every worker: without this each worker would
    # produce the same augmentations. torch gives each worker a seed derived from the loader's generator,
    # so this stays deterministic for a fixed run seed while differing between workers and epochs.
    info = get_worker_info()
    info.dataset.transform.set_random_seed((torch.initial_seed() + RANK_SEED_STRIDE * info.dataset.rank) % 2**32)


class RankSlices(Sampler[list[int]]):
    """This rank's slice of every global batch: the ranks of a data-parallel job split the same batches."""

    def __init__(self, batches: BatchSampler, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            per_rank = len(batch) // self.world_size
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank]


def make_loader(
    images: np.ndarray,
    labels: np.ndarray,
    transform: A.Compose,
    batch_size: int,
    train: bool,
    seed: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Shuffled, drop_last loader for training (every step a full batch); ordered loader for evaluation.

    For training, `batch_size` is the global batch and this rank gets its batch_size / world_size slice.
    """
    generator = torch.Generator().manual_seed(seed)
    dataset = AugmentedImages(images, labels, transform, rank)
    if train:
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} does not split evenly over {world_size} processes")
        shuffled = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=True)
        batching = {"batch_sampler": RankSlices(shuffled, rank, world_size)}
    else:
        batching = {"batch_size": batch_size, "shuffle": False}
    return DataLoader(
        dataset,
        **batching,
        num_workers=num_workers,
        worker_init_fn=_reseed_worker if num_workers > 0 else None,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


class EpochPosition:
    """How far into its epoch a training loader is, so that a stop mid-epoch resumes at that very step.

    The loader's random state is taken as each epoch begins. A loader restored from `state_dict()` taken
    mid-epoch starts that epoch again from the same random state and skips the batches done before the stop;
    the skipped batches still make their random draws, so every later batch is exactly the one the stopped
    run would have seen.
    """

    def __init__(self) -> None:
        self.epoch_start: Any = None  # the random state as the current epoch began; None between epochs
        self.handed_out = 0  # batches of the current epoch handed out so far
        self._skip = 0

    def begin(self, random_state: Any) -> int:
        """An epoch starts: remember the random state; return how many batches to skip (after a resume)."""
        self.epoch_start, self.handed_out = random_state, 0
        skip, self._skip = self._skip, 0
        return skip

    def end(self) -> None:
        self.epoch_start, self.handed_out = None, 0

    def state_dict(self, random_state_now: Any) -> dict[str, Any]:
        if self.epoch_start is None:
            return {"rng": random_state_now, "batches_done": 0}
        return {"rng": self.epoch_start, "batches_done": self.handed_out}

    def resume_at(self, batches_done: int) -> None:
        self._skip = batches_done


class AlbumentationsLoader:
    """The reference engine's training batches (a DataLoader over albumentations pipelines), resumable mid-epoch.

    Its random state is the DataLoader's generator (shuffling, and the seeds of worker processes) and the
    pipeline's own generators, which draw the augmentations when there are no workers (`num_workers=0`).
    Under torchrun without workers (`rank_seeded`), each epoch reseeds this rank's pipeline from a generator
    all ranks share, as worker processes are seeded: only rank 0's random state reaches last.pt, so each rank
    must be able to resume its own draws from a state that is the same on every rank.
    """

    def __init__(self, loader: DataLoader, rank_seeded: bool = False) -> None:
        self.loader, self.position = loader, EpochPosition()
        self.transform: A.Compose = loader.dataset.transform
        # the epochs' pipeline seeds; apart from the loader's generator, so the ranks' shuffles stay a single run's
        self.epoch_seeds = torch.Generator().manual_seed(loader.generator.initial_seed()) if rank_seeded else None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skip = self.position.begin(self._random_state())
        if self.epoch_seeds is not None:
            epoch_seed = int(torch.randint(2**31, (), generator=self.epoch_seeds))
            self.transform.set_random_seed(epoch_seed + RANK_SEED_STRIDE * self.loader.dataset.rank)
        for i, batch in enumerate(self.loader):
            if i >= skip:
                self.position.handed_out = i + 1
                yield batch
        self.position.end()

    def state_dict(self) -> dict[str, Any]:
        return self.position.state_dict(self._random_state())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.generator.set_state(state["rng"]["loader"])
        if self.epoch_seeds is not None and "epoch_seeds" in state["rng"]:
            self.epoch_seeds.set_state(state["rng"]["epoch_seeds"])
        # (a torchrun checkpoint from before the epoch seeds holds none: the resumed epochs draw from the first
        # epoch's seeds, other draws than an unbroken run's, as such a resume always did)
        for step, (numpy_state, python_state) in zip(self._steps(), state["rng"]["pipeline"], strict=True):
            step.random_generator.bit_generator.state = numpy_state
            version, internal, gauss = python_state
            step.py_random.setstate((version, tuple(internal), gauss))
        self.position.resume_at(state["batches_done"])

    def _steps(self) -> list[Any]:
        return [self.transform, *self.transform.transforms]

    def _random_state(self) -> dict[str, Any]:
        pipeline = []
        for step in self._steps():
            version, internal, gauss = step.py_random.getstate()
            pipeline.append([step.random_generator.bit_generator.state, [version, list(internal), gauss]])
        state = {"loader": self.loader.generator.get_state(), "pipeline": pipeline}
        if self.epoch_seeds is not None:
            state["epoch_seeds"] = self.epoch_seeds.get_state()
        return state


class DeviceLoader:
    """Batches of (normalized float images, labels) from uint8 data held on `device`, augmented in place.

    Per sample, like the albumentations pipeline: a crop offset uniform in -pad..+pad on each axis of the
    reflect-padded image (padded once, up front), a horizontal flip with probability 0.5, and one
    cutout x cutout square of zeros (after normalization) whose corner is uniform over the positions that keep
    it fully inside. Randomness comes from one torch.Generator seeded with `seed`, so epochs differ and runs
    repeat. `train=False` gives unshuffled, unaugmented batches including the last partial one.

    For data-parallel training (`world_size` > 1) `batch_size` is the global batch: every rank draws the same
    permutation and the same per-sample draws for the whole global batch, then computes only its own
    batch_size / world_size slice. Together the ranks see exactly the batches one process would.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device,
        train: bool,
        pad: int = 0,
        flip: bool = False,
        cutout: int = 0,
        seed: int = 0,
        memory_format: torch.memory_format = torch.contiguous_format,
        rank: int = 0,
        world_size: int = 1,
        copies: dict | None = None,
        whole_epoch: bool = False,
        stats: Stats = CIFAR10_STATS,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} does not split evenly over {world_size} processes")
        check_fits(images.shape[1:], pad, cutout, stats)
        self.pad, self.flip, self.cutout = (pad, flip, cutout) if train else (0, False, 0)
        self.images, self.labels = self._on_device(images, labels, device, train, copies)
        self.batch_size, self.train, self.device, self.memory_format = batch_size, train, device, memory_format
        self.whole_epoch = whole_epoch and train
        per_rank = batch_size // world_size
        self.my_part = slice(rank * per_rank, (rank + 1) * per_rank) if train else slice(None)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.position = EpochPosition()
        self.mean = torch.tensor(stats[0], device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(stats[1], device=device).view(1, -1, 1, 1) * 255
        height, width = images.shape[1:3]
        self.row_pixels = torch.arange(height, device=device)
        self.col_pixels = torch.arange(width, device=device)

    def _on_device(
        self, images: np.ndarray, labels: np.ndarray, device: torch.device, train: bool, copies: dict | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The images as NCHW uint8 on the device (150 MB for CIFAR-10's training set, 240 MB padded), and the
        labels. `copies` (a ImageData's `device_copies`) keeps them for the next loader of the same data."""
        key = (train, self.pad, str(device))
        if copies is not None and key in copies:
            return copies[key]
        if self.pad:  # numpy "reflect" is OpenCV's BORDER_REFLECT_101, the reference's padding
            images = np.pad(images, ((0, 0), (self.pad, self.pad), (self.pad, self.pad), (0, 0)), mode="reflect")
        made = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
        made = (made, torch.from_numpy(labels).to(device))
        if copies is not None:
            copies[key] = made
        return made

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        skip = self.position.begin(self.generator.get_state())
        if self.train:  # one permutation per epoch; drop the last partial batch
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        batches = self._whole_epoch(order, skip) if self.whole_epoch else self._batch_by_batch(order, skip)
        for i, batch in batches:
            self.position.handed_out = i + 1
            yield batch
        self.position.end()

    def _batch_by_batch(self, order: torch.Tensor, skip: int) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            draws = {name: drawn[self.my_part] for name, drawn in self.draw(len(index)).items()}
            if i < skip:  # resuming mid-epoch: the batches done before the stop still make their draws
                continue
            index = index[self.my_part]
            yield i, (self.augment(self.images[index], draws), self.labels[index])

    def _whole_epoch(self, order: torch.Tensor, skip: int) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
        """The same draws in the same order as batch by batch (so the same batches, bit for bit), made first;
        then the whole epoch is augmented at once and its batches are slices: a dozen kernel launches per
        epoch instead of a dozen per step. It holds the epoch's float images (614 MB for CIFAR-10)."""
        steps = len(self)
        if steps == 0:
            return
        per_batch = [self.draw(self.batch_size) for _ in range(steps)]  # training batches are all full
        draws = {name: torch.cat([drawn[name][self.my_part] for drawn in per_batch]) for name in per_batch[0]}
        index = order[: steps * self.batch_size].view(steps, self.batch_size)[:, self.my_part].reshape(-1)
        images, labels = self.augment(self.images[index], draws), self.labels[index]
        size = index.numel() // steps
        for i in range(skip, steps):
            yield i, (images[i * size : (i + 1) * size], labels[i * size : (i + 1) * size])

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: its random state, and how far into an epoch a stop came."""
        return self.position.state_dict(self.generator.get_state())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])
        self.position.resume_at(state["batches_done"])

    def _uniform_ints(self, high: int, count: int) -> torch.Tensor:
        return torch.randint(0, high, (count,), generator=self.generator, device=self.device)

    def draw(self, count: int) -> dict[str, torch.Tensor]:
        """The random choices for `count` samples: crop offsets, flips, cutout corners (those switched on)."""
        draws = {}
        if self.pad:
            draws["row"] = self._uniform_ints(2 * self.pad + 1, count)
            draws["col"] = self._uniform_ints(2 * self.pad + 1, count)
        if self.flip:
            draws["flip"] = torch.rand(count, generator=self.generator, device=self.device) < 0.5
        if self.cutout:
            draws["top"] = self._uniform_ints(len(self.row_pixels) - self.cutout + 1, count)
            draws["left"] = self._uniform_ints(len(self.col_pixels) - self.cutout + 1, count)
        return draws

    def augment(self, batch: torch.Tensor, draws: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """uint8 (B, C, H + 2 pad, W + 2 pad) -> normalized float (B, C, H, W), each sample its own draw."""
        count = batch.shape[0]
        draws = self.draw(count) if draws is None else draws
        if self.pad:
            rows = draws["row"][:, None] + self.row_pixels  # (B, H) source rows
            cols = draws["col"][:, None] + self.col_pixels
            sample = torch.arange(count, device=self.device)[:, None, None]
            # Advanced indexing on dims 0, 2, 3 gathers each sample's own window: (B, H, W, C).
            batch = batch[sample, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.flip:
            batch = torch.where(draws["flip"][:, None, None, None], batch.flip(3), batch)
        batch = (batch.float() - self.mean) / self.std
        if self.cutout:
            top, left = draws["top"][:, None, None], draws["left"][:, None, None]
            ys, xs = self.row_pixels[None, :, None], self.col_pixels[None, None, :]
            hole = (ys >= top) & (ys < top + self.cutout) & (xs >= left) & (xs < left + self.cutout)
            batch = batch.masked_fill(hole[:, None], 0.0)
        return batch.contiguous(memory_format=self.memory_format)


def check_fits(image_shape: Sequence[int], pad: int, cutout: int, stats: Stats) -> None:
    """The augmentation's sizes and the normalisation's channels against the images' (height, width, channels):
    a ConfigError naming the key and the fix otherwise."""
    height, width, channels = image_shape
    side, shown = min(height, width), f"{height}x{width}"
    if cutout > side:
        raise ConfigError(
            f"augment.cutout={cutout} is larger than the {shown} images; use at most {side} (a quarter of the side "
            f"is CIFAR's proportion: augment.cutout={side // 4})"
        )
    if pad >= side:  # reflect padding mirrors the image once: it needs more pixels than it adds
        raise ConfigError(
            f"augment.pad={pad} does not fit the {shown} images; use at most {side - 1} (an eighth of the side is "
            f"CIFAR's proportion: augment.pad={side // 8})"
        )
    if not len(stats[0]) == len(stats[1]) == channels:
        raise ConfigError(
            f"data.mean and data.std give {len(stats[0])} and {len(stats[1])} values for images of {channels} "
            f"channel(s); give one mean and one std per channel"
        )


@dataclass(frozen=True)
class Augmentation:
    """What `conf/augment/{cutout,crop_flip,none}.yaml` build: the mission's pipeline, and which engine runs it.

    An augment option is any object with these two methods (`Pipeline` below is the other one resnet9 ships);
    `stats` is the data set's normalisation, (mean, std) per channel.
    """

    pad: int = 4
    flip: bool = True
    cutout: int = 8
    engine: str = "auto"
    whole_epoch: bool | str = "auto"  # device engine: augment each epoch at once; auto = on CUDA

    def train_loader(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device,
        seed: int,
        num_workers: int = 0,
        memory_format: torch.memory_format = torch.contiguous_format,
        rank: int = 0,
        world_size: int = 1,
        copies: dict | None = None,
        stats: Stats = CIFAR10_STATS,
    ) -> DeviceLoader | AlbumentationsLoader:
        """Training batches; with world_size > 1, this rank's slice of each global batch of `batch_size`.

        Both engines have `state_dict()` / `load_state_dict()`: their random state and their place in the epoch.
        `copies`: where the device engine keeps (and finds) the images it put on the device.
        """
        if self.engine == "albumentations":
            check_fits(images.shape[1:], self.pad, self.cutout, stats)
            pipeline_seed = seed + RANK_SEED_STRIDE * rank
            transform = train_transform(self.pad, self.flip, self.cutout, pipeline_seed, stats, images.shape[1:3])
            return albumentations_loader(images, labels, transform, batch_size, seed, num_workers, rank, world_size)
        return DeviceLoader(
            images,
            labels,
            batch_size,
            device,
            train=True,
            pad=self.pad,
            flip=self.flip,
            cutout=self.cutout,
            seed=seed,
            memory_format=memory_format,
            rank=rank,
            world_size=world_size,
            copies=copies,
            whole_epoch=self.whole_epoch is True or (self.whole_epoch == "auto" and device.type == "cuda"),
            stats=stats,
        )

    def test_loader(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device,
        num_workers: int = 0,
        memory_format: torch.memory_format = torch.contiguous_format,
        copies: dict | None = None,
        stats: Stats = CIFAR10_STATS,
    ) -> DeviceLoader | DataLoader:
        if self.engine == "albumentations":
            transform = test_transform(stats)
            return make_loader(images, labels, transform, batch_size, train=False, seed=0, num_workers=num_workers)
        return DeviceLoader(
            images, labels, batch_size, device, train=False, memory_format=memory_format, copies=copies, stats=stats
        )


def albumentations_loader(
    images: np.ndarray,
    labels: np.ndarray,
    transform: A.Compose,
    batch_size: int,
    seed: int,
    num_workers: int,
    rank: int,
    world_size: int,
) -> AlbumentationsLoader:
    """Shuffled training batches through a per-image albumentations pipeline, resumable mid-epoch."""
    loader = make_loader(
        images, labels, transform, batch_size, train=True, seed=seed, num_workers=num_workers, rank=rank,
        world_size=world_size,
    )  # fmt: skip
    return AlbumentationsLoader(loader, rank_seeded=world_size > 1 and num_workers == 0)


@dataclass(frozen=True)
class Pipeline:
    """Any albumentations pipeline, written in YAML (conf/augment/albumentations.yaml), on the albumentations engine.

    `train` runs on the uint8 HWC image; then the data set's normalisation; then `after_normalize` (where
    Cutout belongs: a CoarseDropout with fill 0 holds the data set's mean). Test images are normalised only.
    """

    train: Sequence[A.BasicTransform] = ()
    after_normalize: Sequence[A.BasicTransform] = ()

    def train_loader(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device,
        seed: int,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        stats: Stats = CIFAR10_STATS,
        **_: Any,  # the device engine's settings (memory format, device copies): nothing to do here
    ) -> AlbumentationsLoader:
        steps = [*self.train, _normalize(stats), *self.after_normalize]
        transform = A.Compose(steps, seed=seed + RANK_SEED_STRIDE * rank)
        _warn_if_resized(transform, images)
        return albumentations_loader(images, labels, transform, batch_size, seed, num_workers, rank, world_size)

    def test_loader(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device,
        num_workers: int = 0,
        stats: Stats = CIFAR10_STATS,
        **_: Any,
    ) -> DataLoader:
        transform = test_transform(stats)
        return make_loader(images, labels, transform, batch_size, train=False, seed=0, num_workers=num_workers)


def _warn_if_resized(transform: A.Compose, images: np.ndarray) -> None:
    """One warning line where a pipeline turns the data's images into another size (conf/augment/albumentations.yaml
    is written for 32 px: on 64 px images it would train on 32 px crops and test on whole images)."""
    if len(images) == 0:
        return
    # a copy runs it: the run's own pipeline keeps its random state, so its draws stay the same
    made = copy.deepcopy(transform)(image=images[0])["image"].shape
    if made != images.shape[1:]:
        height, width = images.shape[1:3]
        logging.getLogger(__name__).warning(
            "augment.train turns the data's %s images into %s ones, but the test images stay %s; write the "
            "pipeline's sizes for the data (e.g. PadIfNeeded %dx%d, RandomCrop %dx%d)",
            "x".join(map(str, images.shape[1:])), "x".join(map(str, made)), "x".join(map(str, images.shape[1:])),
            height + 8, width + 8, height, width,
        )  # fmt: skip
