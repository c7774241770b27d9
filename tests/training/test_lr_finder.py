import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from resnet9.analysis import plots
from resnet9.core.errors import UsageError
from resnet9.data import augment, datasets
from resnet9.models.resnet9 import ResNet9
from resnet9.training.engine import build
from resnet9.training.lr import derive, rules
from resnet9.training.lr import range_test as lr_finder

CONF = str(Path(__file__).resolve().parents[2] / "conf")


@pytest.fixture(scope="module")
def small_data(synthetic_root):
    return datasets.load(synthetic_root, download=False, limit_train=400)


@pytest.fixture
def small_setup(synthetic_root, small_data, tmp_path):
    for sub in ("a", "b", "c"):
        (tmp_path / sub).mkdir()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                f"data.root={synthetic_root}", "data.limit_train=400", "data.num_workers=0", "batch_size=40",
                "model.width=0.125", "lr_finder.num_iter=30", "device=cpu",
            ],
        )  # fmt: skip
    return cfg, small_data


def test_range_test_restores_the_model_it_trained(small_setup):
    cfg, data_set = small_setup
    torch.manual_seed(0)
    model = ResNet9(width=0.125)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr_finder.start_lr, momentum=0.9)
    spec = augment.Augmentation(engine="device")
    loader = spec.train_loader(data_set.train_images, data_set.train_labels, 40, torch.device("cpu"), seed=0)
    history = lr_finder.run_range_test(model, optimizer, loader, torch.device("cpu"), cfg.lr_finder)
    found = rules.read(history, cfg.lr_finder)
    assert len(history["lr"]) > 20 and 0 < found.lr_min < found.lr_max
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics untouched


def find(cfg, data_set, out_dir: Path) -> rules.LRRange:
    """The range test as the trainer runs it: the config's probe, its curve and the rule's reading, on the CPU."""
    settings = build.step_settings(cfg, torch.device("cpu"))
    return derive.read_range(cfg, data_set, settings, out_dir)


def test_range_test_on_small_data_writes_plot_and_json(small_setup, tmp_path):
    cfg, data_set = small_setup
    cfg.lr_finder.cache_dir = str(tmp_path / "cache")
    rng = torch.get_rng_state()
    found = find(cfg, data_set, tmp_path)
    plots.wait_for_figures()
    assert torch.equal(rng, torch.get_rng_state())  # the run's random state is left as it was
    assert 0 < found.lr_min < found.lr_max
    assert not found.cached and len(found.history["lr"]) > 20
    saved = json.loads((tmp_path / "lr_finder.json").read_text())
    assert saved["lr_min"] == found.lr_min and saved["lr_max"] == found.lr_max
    assert Image.open(tmp_path / "lr_finder.png").size[0] > 500
    cached = json.loads((Path(cfg.lr_finder.cache_dir) / found.cache_key / "curve.json").read_text())
    assert cached == found.history == saved["history"]  # the cache keeps the curve, not what was read from it


def test_second_identical_test_comes_from_the_cache(small_setup, tmp_path, monkeypatch):
    cfg, data_set = small_setup
    cfg.lr_finder.cache_dir = str(tmp_path / "cache")
    first = find(cfg, data_set, tmp_path / "a")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the range test ran again instead of using the cache")

    monkeypatch.setattr(lr_finder, "run_range_test", must_not_run)
    cfg.optimizer.lr = 0.05  # the LRs to be derived are not part of the key...
    cfg.lr_finder.scale = 2.0  # ...nor is the scale applied afterwards...
    cfg.seed = 7  # ...nor the run's seed: all seeds of a sweep share one test
    second = find(cfg, data_set, tmp_path / "b")
    assert second.cached and (second.lr_min, second.lr_max) == (first.lr_min, first.lr_max)
    assert second.history == first.history
    plots.wait_for_figures()
    assert (tmp_path / "b" / "lr_finder.png").is_file()

    other_reading = cfg.copy()  # another rule, divisor or trim reads the cached curve again
    other_reading.lr_finder.update(rule="steepest", max_divisor=2.0, skip_start=5)
    third = find(other_reading, data_set, tmp_path / "b")
    assert third.cached and third.rule == "steepest" and third.lr_max == pytest.approx(third.picks["steepest"] / 2)

    for key, value in (("lr_finder.num_iter", 25), ("lr_finder.seed", 1), ("batch_size", 20)):
        changed = cfg.copy()
        OmegaConf.update(changed, key, value)  # another curve: the test must run
        with pytest.raises(AssertionError, match="ran again"):
            find(changed, data_set, tmp_path / "c")


@pytest.mark.slow  # (make test-full; make test stays under 10 minutes on 2 cores)
def test_damaged_cache_entry_is_recomputed(small_setup, tmp_path, caplog):
    cfg, data_set = small_setup
    caplog.set_level(logging.INFO, logger="resnet9")
    cfg.lr_finder.cache_dir = str(tmp_path / "cache")
    first = find(cfg, data_set, tmp_path / "a")
    entry = Path(cfg.lr_finder.cache_dir) / first.cache_key
    saved = json.loads((entry / "curve.json").read_text())
    damaged = {
        "b": "{truncated",
        "c": json.dumps({**saved, "lr": saved["lr"][:-1]}),  # lengths differ
        "d": json.dumps({**saved, "loss": [*saved["loss"][:-1], "nan; import os"]}),
        "e": json.dumps({**saved, "lr": saved["lr"][::-1]}),  # LRs that do not grow
        "f": json.dumps({**saved, "loss": [*saved["loss"][:-1], float("inf")]}),
    }
    for name, text in damaged.items():
        (entry / "curve.json").write_text(text)
        (tmp_path / name).mkdir(exist_ok=True)
        caplog.clear()
        again = find(cfg, data_set, tmp_path / name)
        assert not again.cached, name
        assert json.loads((entry / "curve.json").read_text()) == again.history
        assert "is unreadable or damaged; this test replaces it" in caplog.text, name  # not "no cached result"


def test_a_cache_folder_that_is_a_file_is_refused_before_the_test(small_setup, tmp_path, monkeypatch):
    cfg, data_set = small_setup
    (tmp_path / "cachefile").write_text("not a folder")
    cfg.lr_finder.cache_dir = str(tmp_path / "cachefile" / "lr_find")  # RESNET9_CACHE=<a file>
    monkeypatch.setattr(lr_finder, "run_range_test", lambda *a, **k: pytest.fail("the test ran before the refusal"))
    with pytest.raises(UsageError, match=r"cachefile is a file; point RESNET9_CACHE or lr_finder.cache_dir at a"):
        find(cfg, data_set, tmp_path / "a")
    assert (tmp_path / "cachefile").read_text() == "not a folder"


def test_a_cache_behind_a_folder_we_may_not_search_costs_a_warning_not_the_run(
    small_setup, tmp_path, monkeypatch, caplog
):
    cfg, data_set = small_setup
    caplog.set_level(logging.WARNING, logger="resnet9")
    cfg.lr_finder.cache_dir = str(tmp_path / "locked" / "lr_find")
    real_exists = Path.exists

    def exists(
        path: Path, *args, **kwargs
    ) -> bool:  # as Path.exists answers a folder inside a 0700 one of another user
        if "locked" in path.parts:
            raise PermissionError(13, "Permission denied", str(path))
        return real_exists(path, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    monkeypatch.setattr(lr_finder.tempfile, "mkdtemp", lambda **kw: (_ for _ in ()).throw(PermissionError(13, "no")))
    found = find(cfg, data_set, tmp_path / "a")
    assert 0 < found.lr_min < found.lr_max and "cannot cache the curve" in caplog.text


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_run(small_setup, tmp_path, monkeypatch, caplog):
    cfg, data_set = small_setup
    caplog.set_level(logging.WARNING, logger="resnet9")
    cfg.lr_finder.cache_dir = str(tmp_path / "cache")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lr_finder.tempfile, "mkdtemp", disk_full)
    found = find(cfg, data_set, tmp_path / "a")
    assert 0 < found.lr_min < found.lr_max and (tmp_path / "a" / "lr_finder.json").is_file()
    assert "cannot cache the curve" in caplog.text and "No space left" in caplog.text
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written left behind


@pytest.mark.slow  # (make test-full; make test stays under 10 minutes on 2 cores)
def test_cli_runs_the_test_once_then_answers_from_the_cache(run_cli, synthetic_root, tmp_path):
    args = [f"data.root={synthetic_root}", "data.limit_train=400", "batch_size=40", "model.width=0.125",
            "lr_finder.num_iter=30", "device=cpu"]  # fmt: skip
    first = run_cli("resnet9.lr_find", *args, f"hydra.run.dir={tmp_path}/a")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "(new test;" in first.stdout
    saved = json.loads((tmp_path / "a" / "lr_finder.json").read_text())
    assert f"LRMIN={saved['lr_min']:.4g} LRMAX={saved['lr_max']:.4g}" in first.stdout
    assert (tmp_path / "a" / "lr_finder.png").is_file()
    second = run_cli("resnet9.lr_find", *args, "seed=5", f"hydra.run.dir={tmp_path}/b")
    assert second.returncode == 0 and "(cached curve;" in second.stdout  # a run seed does not change the test
    assert "every rule's LRMAX (lr_finder.rule=...): steepest " in second.stdout


def test_jobs_started_together_on_a_cold_cache_run_one_range_test(synthetic_root, tmp_path, monkeypatch):
    """Two jobs of a sweep start at once (a SLURM array, joblib) with the same setup and no cached curve: one runs
    the test, the other waits for its lock and reads its curve. The test holds the lock itself until both are
    waiting, so that they really arrive together."""
    monkeypatch.setenv("RESNET9_CACHE", str(tmp_path / "cache"))
    args = [f"data.root={synthetic_root}", "data.limit_train=400", "batch_size=40", "model.width=0.125",
            "lr_finder.num_iter=30", "device=cpu", "progress=false"]  # fmt: skip
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="lr_find", overrides=args)
    settings = build.step_settings(cfg, torch.device("cpu"))
    entry = lr_finder.cache_entry_of(cfg.lr_finder, lr_finder.probe(cfg, None, settings))
    entry.parent.mkdir(parents=True)
    held = os.open(entry.with_name(f"{entry.name}.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    jobs = []
    for name in ("a", "b"):
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        command = [sys.executable, "-m", "resnet9.lr_find", *args, f"hydra.run.dir={tmp_path / name}"]
        jobs.append((subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        deadline = time.monotonic() + 120
        while not all("waiting for its curve" in (tmp_path / f"{n}.log").read_text() for n in "ab"):
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in jobs):
                pytest.fail("a job did not wait: " + " | ".join((tmp_path / f"{n}.log").read_text() for n in "ab"))
            time.sleep(0.1)
    finally:
        os.close(held)  # both wait: let them go
        for process, log in jobs:
            process.wait(timeout=120)
            log.close()
    outputs = [(tmp_path / f"{n}.log").read_text() for n in "ab"]
    assert sorted("(new test;" in text for text in outputs) == [False, True], outputs  # one test ran...
    assert sum("(cached curve;" in text for text in outputs) == 1  # ...and the other job read its curve
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # the lock file went with the lock
