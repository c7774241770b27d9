"""One data-parallel training step, run by tests/training/test_distributed.py under torchrun (not collected by pytest).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py OUT_DIR

Each rank starts from *different* random weights (DDP must replace them with rank 0's), trains one step on
its slice of the first global batch through the trainer's own pieces, and saves what it started from, what it
saw and what it holds to OUT_DIR/rank<N>.pt. Then rank 1 alone nudges one weight, and every rank records
whether `check_replicas_in_sync` noticed.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from resnet9.data import augment
from resnet9.models.resnet9 import ResNet9
from resnet9.training.engine import distributed
from resnet9.training.engine.loop import StepSettings, train_one_epoch

GLOBAL_BATCH, LR = 64, 0.1


def synthetic_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)  # the same data on every rank, as every rank loads the same files
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, count)


def main(out: Path) -> None:
    here = distributed.init()
    torch.manual_seed(100 + here.rank)
    model = ResNet9(width=0.125)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    cpu = torch.device("cpu")
    trained = distributed.wrap(model, cpu)

    images, labels = synthetic_images(4 * GLOBAL_BATCH)
    loader = augment.DeviceLoader(images, labels, GLOBAL_BATCH, cpu, train=True, pad=4, flip=True, cutout=8,
                                  seed=0, rank=here.rank, world_size=here.size)  # fmt: skip
    first_batch = next(iter(loader))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    progress = train_one_epoch(trained, [first_batch], optimizer, scheduler, StepSettings(device=cpu))
    epoch = distributed.sum_epoch(progress).read(first_step=0)  # over both ranks' slices
    loss, accuracy = epoch.loss, epoch.accuracy
    after = {name: p.detach().clone() for name, p in model.named_parameters()}

    if here.rank == 1:
        with torch.no_grad():
            next(model.parameters())[0].add_(1e-3)
    try:
        distributed.check_replicas_in_sync(model)
        detected = False
    except RuntimeError:
        detected = True
    torch.save(
        {
            "initial": initial,
            "after": after,
            "images": first_batch[0],
            "labels": first_batch[1],
            "loss": loss,
            "accuracy": accuracy,
            "out_of_sync_detected": detected,
        },
        out / f"rank{here.rank}.pt",
    )
    distributed.finish()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
