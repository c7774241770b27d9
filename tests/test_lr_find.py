import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from resnet9 import augment, build, data, lr_find
from resnet9.model import ResNet9

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def synthetic_curve() -> tuple[list[float], list[float]]:
    """A textbook range-test curve: flat, a steep fall centred at 1e-2, lowest near 0.1, then divergence."""
    lrs = np.logspace(-5, 1, 100)
    x = np.log10(lrs)
    losses = 2.3 - 1.0 / (1 + np.exp(-(x + 2) * 4)) + 0.8 * np.clip(x + 1, 0, None) ** 2
    return lrs.tolist(), losses.tolist()


def test_rule_reads_the_lowest_loss_and_where_the_fall_begins():
    lrs, losses = synthetic_curve()
    found = lr_find.derive_lr_range(lrs, losses, skip_start=10, skip_end=5, max_divisor=1, min_drop=0.1)
    assert found.min_loss_lr == pytest.approx(lrs[int(np.argmin(losses))])
    assert 0.05 < found.lr_max < 0.2
    # The sigmoid has made 10% of its fall where 1 / (1 + exp(-4 (x + 2))) = 0.1, i.e. x = -2 - ln(9) / 4.
    assert found.lr_min == pytest.approx(10 ** (-2 - np.log(9) / 4), rel=0.15)
    assert found.steepest_lr == pytest.approx(1e-2, rel=0.2)  # recorded and drawn, no longer LRMIN
    assert found.lr_min < found.steepest_lr < found.lr_max
    assert lr_find.derive_lr_range(lrs, losses, 10, 5, max_divisor=4).lr_max == pytest.approx(found.lr_max / 4)
    later = lr_find.derive_lr_range(lrs, losses, 10, 5, max_divisor=1, min_drop=0.5)
    assert later.lr_min == pytest.approx(1e-2, rel=0.15)  # half way down is the sigmoid's centre


def test_a_drop_past_the_minimum_is_ignored():
    # The loss falls gently to its lowest point, then a sharp *drop* on the way up (noise) follows it.
    lrs = np.logspace(-4, 0, 60).tolist()
    losses = [2.3 - 0.01 * i for i in range(30)] + [3.0 - 0.3 * (i % 2) for i in range(30)]
    found = lr_find.derive_lr_range(lrs, losses, skip_start=5, skip_end=5, max_divisor=1)
    assert found.lr_min < found.lr_max == pytest.approx(lrs[29])
    # 10% of the way from 2.25 (the first point kept, index 5) down to 2.01 (index 29) is 2.226: index 8
    assert found.lr_min == pytest.approx(lrs[8])


def test_falls_back_to_a_tenth_of_lrmax_when_there_is_no_fall():
    lrs = np.logspace(-4, 0, 40).tolist()
    losses = [2.0 + 0.01 * i for i in range(40)]  # rises from the start
    found = lr_find.derive_lr_range(lrs, losses, skip_start=5, skip_end=5, max_divisor=1)
    assert found.lr_min == pytest.approx(found.lr_max / 10)
    assert "LRMAX / 10" in found.rule


@pytest.fixture(scope="module")
def small_data(synthetic_root):
    return data.load(synthetic_root, download=False, limit_train=400)


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
    cfg, cifar = small_setup
    torch.manual_seed(0)
    model = ResNet9(width=0.125)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr_finder.start_lr, momentum=0.9)
    spec = augment.Augmentation(engine="device")
    loader = spec.train_loader(cifar.train_images, cifar.train_labels, 40, torch.device("cpu"), seed=0)
    found = lr_find.run_range_test(model, optimizer, loader, torch.device("cpu"), cfg.lr_finder)
    assert len(found.history["lr"]) > 20 and 0 < found.lr_min < found.lr_max
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics untouched


def find(cfg, cifar, out_dir: Path) -> lr_find.LRRange:
    """The range test as the trainer runs it: the config's probe, on the CPU."""
    settings = build.step_settings(cfg, torch.device("cpu"))
    return lr_find.find_lr_range(cfg.lr_finder, build.range_test_probe(cfg, cifar, settings), settings.device, out_dir)


def test_range_test_on_small_data_writes_plot_and_json(small_setup, tmp_path):
    cfg, cifar = small_setup
    cfg.lr_finder.cache_dir = str(tmp_path / "cache")
    rng = torch.get_rng_state()
    found = find(cfg, cifar, tmp_path)
    assert torch.equal(rng, torch.get_rng_state())  # the run's random state is left as it was
    assert 0 < found.lr_min < found.lr_max
    assert not found.cached and len(found.history["lr"]) > 20
    saved = json.loads((tmp_path / "lr_finder.json").read_text())
    assert saved["lr_min"] == found.lr_min and saved["lr_max"] == found.lr_max
    assert Image.open(tmp_path / "lr_finder.png").size[0] > 500
    assert (Path(cfg.lr_finder.cache_dir) / found.cache_key / "lr_finder.json").is_file()


def test_second_identical_test_comes_from_the_cache(small_setup, tmp_path, monkeypatch):
    cfg, cifar = small_setup
    cfg.lr_finder.cache_dir = str(tmp_path / "cache")
    first = find(cfg, cifar, tmp_path / "a")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the range test ran again instead of using the cache")

    monkeypatch.setattr(lr_find, "run_range_test", must_not_run)
    cfg.optimizer.lr = 0.05  # the LRs to be derived are not part of the key...
    cfg.lr_finder.scale = 2.0  # ...nor is the scale applied afterwards...
    cfg.seed = 7  # ...nor the run's seed: all seeds of a sweep share one test
    second = find(cfg, cifar, tmp_path / "b")
    assert second.cached and (second.lr_min, second.lr_max) == (first.lr_min, first.lr_max)
    assert (tmp_path / "b" / "lr_finder.png").is_file()

    for key, value in (("lr_finder.max_divisor", 2.0), ("lr_finder.seed", 1), ("batch_size", 20)):
        changed = cfg.copy()
        OmegaConf.update(changed, key, value)  # another reading of the curve, or another curve: must run
        with pytest.raises(AssertionError, match="ran again"):
            find(changed, cifar, tmp_path / "c")


def test_damaged_cache_entry_is_recomputed(small_setup, tmp_path):
    cfg, cifar = small_setup
    cfg.lr_finder.cache_dir = str(tmp_path / "cache")
    first = find(cfg, cifar, tmp_path / "a")
    entry = Path(cfg.lr_finder.cache_dir) / first.cache_key
    saved = json.loads((entry / "lr_finder.json").read_text())
    for name, damaged in (("b", "{truncated"), ("c", json.dumps({**saved, "lr_max": "0.4; import os"}))):
        (entry / "lr_finder.json").write_text(damaged)
        again = find(cfg, cifar, tmp_path / name)
        assert not again.cached
        assert json.loads((entry / "lr_finder.json").read_text())["lr_max"] == again.lr_max


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
    assert second.returncode == 0 and "(cache;" in second.stdout  # a run seed does not change the test
