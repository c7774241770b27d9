"""Files from disk are untrusted input: random bytes, truncations and wrong types fed to every loader of files.

Each loader must end in one line naming the file and a non-zero exit (or, for a sweep's metrics.json, count
the job as failed with one line) — never a traceback, never code run, never a file written outside its run
folder. The loaders are called in-process, as their commands call them, so that many cases stay cheap.
"""

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from test_data import linked_copy, replace_batch
from test_train import small_run

from resnet9 import predict, report
from resnet9.core.errors import UsageError
from resnet9.data import datasets
from resnet9.train import train


def fuzzed(original: bytes, seed: int) -> list[bytes]:
    """Random bytes, the file cut at several points, and the file with bytes flipped."""
    rng = np.random.default_rng(seed)
    flipped = bytearray(original)
    for at in rng.integers(0, len(original), size=8):
        flipped[at] ^= 0xFF
    cuts = [len(original) * k // 5 for k in range(5)]  # 0 (empty), 1/5 ... 4/5 of the file
    return [rng.bytes(256), *(original[:cut] for cut in cuts), bytes(flipped)]


def wrong_types_pickled() -> list[bytes]:
    return [pickle.dumps(value, protocol=2) for value in (None, 3, "text", [1, 2], {b"data": "x", b"labels": 7})]


def wrong_types_torch() -> list[bytes]:
    cases = []
    wide = {"_target_": "resnet9.models.resnet9.ResNet9", "width": 1e6}  # would ask the allocator for 2.9e17 bytes
    for value in ({}, [1, 2], {"model": 3, "config": "x"}, {"model": {}, "config": {"model": {"width": "wide"}}},
                  {"model": {}, "config": {"model": wide}}):  # fmt: skip
        buffer = io.BytesIO()
        torch.save(value, buffer)
        cases.append(buffer.getvalue())
    return cases


def files_in(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*")}


@pytest.fixture
def quiet_folder(tmp_path, monkeypatch):
    """The working folder of the call: nothing may appear in it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def assert_one_line_exit(capsys, call, *fragments: str) -> None:
    with pytest.raises(SystemExit) as exit_status:
        call()
    assert exit_status.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def test_data_batches(synthetic_root, tmp_path, quiet_folder):
    folder = linked_copy(synthetic_root, tmp_path / "copy")
    original = (synthetic_root / datasets.BATCHES_DIR / "data_batch_1").read_bytes()  # the first read
    for i, content in enumerate([*fuzzed(original[:4096], seed=1), *wrong_types_pickled()]):
        replace_batch(folder, "data_batch_1", content)
        with pytest.raises(datasets.DataError) as err:
            datasets.load(tmp_path / "copy", download=False)
        message = str(err.value)
        assert "\n" not in message and str(folder / "data_batch_1") in message, (i, message)
    assert files_in(quiet_folder) == set()


def test_checkpoints(trained_run, tmp_path, quiet_folder, capsys):
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    original = (trained_run / "last.pt").read_bytes()
    before = files_in(tmp_path)
    path = tmp_path / "last.pt"
    formats = []  # a format from a later resnet9 (its layout may mean something else), and crafted ones
    for fmt in (99, torch.tensor([1, 2]), "2"):
        formats.append(io.BytesIO())
        torch.save({**torch.load(trained_run / "last.pt", weights_only=True), "format": fmt}, formats[-1])
    raw_pickle = pickle.dumps({"model": {}}, protocol=4)  # torch warns about the protocol before it refuses
    cases = [*fuzzed(original, seed=2)[:-1], *wrong_types_torch(), *(f.getvalue() for f in formats), raw_pickle]
    for content in cases:  # (flips in weights: other weights)
        path.write_bytes(content)
        call = lambda: predict.main(["--checkpoint", str(path), str(image)])  # noqa: E731
        assert_one_line_exit(capsys, call, str(path), "pass --checkpoint <run folder>/last.pt")
    assert files_in(tmp_path) == before | {path} and files_in(quiet_folder) == set()


def test_images(trained_run, tmp_path, quiet_folder, capsys):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
    path = tmp_path / "image.png"
    for content in fuzzed(buffer.getvalue(), seed=3)[:-1]:  # (flipped bytes may still decode: a valid image)
        path.write_bytes(content)
        call = lambda: predict.main(["--checkpoint", str(trained_run / "last.pt"), str(path)])  # noqa: E731
        assert_one_line_exit(capsys, call, str(path), "not a readable image")
    assert files_in(quiet_folder) == set()


def test_a_sweeps_metrics_files(tmp_path, quiet_folder, capsys):
    """A sweep's report counts a job whose metrics.json is damaged or odd as failed, in one line each."""
    sweep = tmp_path / "sweep"
    good = {"status": "completed", "overrides": ["seed=0"], "final_test_acc": 0.5}
    good["epochs"] = [{"epoch": 1, "test_acc": 0.5}]
    original = json.dumps(good).encode()
    odd = [b"[]", b'{"status": 3}', b'{"overrides": "seed=1"}', b'{"epochs": [{"epoch": "one"}]}', b"[" * 100_000]
    cases = [*fuzzed(original, seed=4)[:-1], *odd]
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").touch()
    (sweep / "0" / "metrics.json").write_bytes(original)
    for n, content in enumerate(cases, start=1):
        (sweep / str(n)).mkdir()
        (sweep / str(n) / "metrics.json").write_bytes(content)
    report.main([str(sweep), "--tracker", "none"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("job ")]
    assert len(lines) == len(cases) and all("unreadable: its metrics.json is unreadable" in x for x in lines)
    rows = json.loads((sweep / "summary.json").read_text())
    assert sum(row["jobs"] for row in rows) == len(cases) + 1 and sum(row["n"] for row in rows) == 1
    assert files_in(quiet_folder) == set() and "Traceback" not in out


def test_checkpoints_to_resume_from(trained_run, synthetic_root, tmp_path, quiet_folder):
    """A run folder's last.pt, read to resume: damaged, of wrong types, or of the right shape with odd state."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*small_run(synthetic_root, "logger=none"), "device=cpu",
                                                       "optimizer.lr=0.1", "scheduler.lr_min=0.01"])  # fmt: skip
    original = (trained_run / "last.pt").read_bytes()
    odd_state = []
    for change in ({"epoch": "two"}, {"optimizer": {"state": 3}}, {"record": {"lr_source": "x", "epochs": 5}}):
        checkpoint = torch.load(trained_run / "last.pt", weights_only=True)
        checkpoint["config"] = OmegaConf.to_container(cfg, resolve=True)  # the same run: only the state is odd
        checkpoint["train_state"] |= change
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        odd_state.append(buffer.getvalue())
    out = tmp_path / "run"
    out.mkdir()
    for content in [*fuzzed(original, seed=5)[:3], *wrong_types_torch(), *odd_state]:
        (out / "last.pt").write_bytes(content)
        with pytest.raises(UsageError) as err:
            train(cfg, out)
        message = str(err.value)
        assert str(out / "last.pt") in message and "resume=false" in message and "\n" not in message, message
        assert (out / "last.pt").read_bytes() == content  # left as it was
    cfg.resume = False  # starts over in place, whatever last.pt holds
    train(cfg, out)
    fresh = json.loads((out / "metrics.json").read_text())
    assert fresh["status"] == "completed" and "resumed_from_epoch" not in fresh and len(fresh["epochs"]) == 2
    assert files_in(quiet_folder) == set()
