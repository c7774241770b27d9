"""Shared fixtures: where CIFAR-10 comes from in tests, and how to run the CLI in a subprocess."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from resnet9.train import train

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "cifar10"
HAS_REAL_DATA = (SHARED_CIFAR / "cifar-10-batches-py" / "test_batch").is_file()
requires_real_data = pytest.mark.skipif(not HAS_REAL_DATA, reason="no staged CIFAR-10 at ../shared/cifar10")

# Ten well-separated colours: synthetic class c is colour c plus noise, so a network learns it in one epoch.
CLASS_COLOURS = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [128, 128, 0], [0, 0, 128]],
    dtype=np.float32,
)  # fmt: skip


def synthetic_batch(labels: np.ndarray, rng: np.random.Generator) -> dict:
    """One batch in the official pickle layout: rows of 1024 R, 1024 G, 1024 B values."""
    # int16 uniform noise: cheap to draw for 60k images, and plenty to make the classes non-trivial.
    noise = rng.integers(-60, 61, size=(len(labels), 3, 1024), dtype=np.int16)
    data = np.clip(CLASS_COLOURS.astype(np.int16)[labels][:, :, None] + noise, 0, 255).astype(np.uint8)
    return {b"batch_label": b"synthetic", b"labels": labels.tolist(), b"data": data.reshape(len(labels), 3072),
            b"filenames": [b"x.png"] * len(labels)}  # fmt: skip


def write_synthetic_cifar(root: Path, seed: int = 0) -> Path:
    """A full-size (50k/10k, balanced) learnable stand-in for CIFAR-10 under root/cifar-10-batches-py."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = rng.permutation(np.repeat(np.arange(10), 5000))
    for i in range(5):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump(synthetic_batch(train_labels[i * 10000 : (i + 1) * 10000], rng), f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(synthetic_batch(np.repeat(np.arange(10), 1000), rng), f, protocol=2)
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cifar(tmp_path_factory.mktemp("synthetic_cifar"))


@pytest.fixture(scope="session")
def cifar_root(synthetic_root: Path) -> Path:
    """The staged real copy when present, else the synthetic one."""
    return SHARED_CIFAR if HAS_REAL_DATA else synthetic_root


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run `python -m <module> <args>` in a subprocess from the repo root, offline, with a private cache."""

    def run(module: str, *args: str, timeout: float = 600, umask: int | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "RESNET9_CACHE": str(tmp_path / "cache")}
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
            preexec_fn=None if umask is None else lambda: os.umask(umask),
        )  # fmt: skip

    return run


@pytest.fixture(scope="session")
def trained_run(synthetic_root, tmp_path_factory) -> Path:
    """A small CPU training whose checkpoint the tests evaluate."""
    out = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                f"data.root={synthetic_root}", "data.limit_train=400", "data.limit_test=300", "batch_size=40",
                "model.width=0.125", "epochs=2", "scheduler.peak_epoch=1", "optimizer.lr=0.1",
                "scheduler.lr_min=0.01", "logger=none", "progress=false", "device=cpu",
            ],
        )  # fmt: skip
    train(cfg, out)
    return out
