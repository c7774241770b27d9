"""Where a run's LRMIN and LRMAX come from: numbers given in the config, the range test (cached unless
lr_finder.cache=false), and under torchrun rank 0's test alone."""

import logging
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import resnet9.train as trainer
from resnet9.training.engine import distributed as ddp
from resnet9.training.engine.state import RunLRs
from resnet9.training.lr import derive, rules
from resnet9.training.lr import range_test as lr_finder

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_with(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def textbook_history() -> dict[str, list[float]]:
    """100 steps from 1e-5 to 10: flat, a fall around LR 0.01, the lowest loss near 0.3, then a climb."""
    lrs = np.geomspace(1e-5, 10, 100)
    x = np.log10(lrs)
    losses = 2.3 - 1.8 / (1 + np.exp(-3 * (x + 2))) + 2.0 * np.clip(x + 0.5, 0, None) ** 2
    return {"lr": lrs.tolist(), "loss": losses.tolist()}


def textbook_reading(finder_cfg):
    return rules.read(textbook_history(), finder_cfg)


class CountedRange:
    """`derive.read_range` replaced: the textbook curve's reading, counting the range tests asked for."""

    def __init__(self, monkeypatch) -> None:
        self.runs = 0
        monkeypatch.setattr(derive, "read_range", self)

    def __call__(self, cfg, *args, **kwargs) -> rules.LRRange:
        self.runs += 1
        return textbook_reading(cfg.lr_finder)


def test_numbers_for_both_lrs_are_taken_as_given_and_no_range_test_runs(monkeypatch):
    cfg = compose_with("optimizer.lr=0.4", "scheduler.lr_min=0.04", "lr_finder.scale=2")
    tests = CountedRange(monkeypatch)
    lrs = derive.lrs_for_run(cfg, None, None, Path("unused"))
    assert (lrs.lr_min, lrs.lr_max, lrs.source, lrs.reading) == (0.04, 0.4, "config", None) and tests.runs == 0


@pytest.mark.parametrize("given", ["optimizer.lr", "scheduler.lr_min"])
def test_a_number_replaces_its_own_lr_unscaled_and_the_other_is_still_derived(given, monkeypatch):
    number = 0.5 if given == "optimizer.lr" else 1e-4
    cfg = compose_with(f"{given}={number}", "lr_finder.scale=2")
    tests = CountedRange(monkeypatch)
    lrs = derive.lrs_for_run(cfg, None, None, Path("unused"))
    found = textbook_reading(cfg.lr_finder)
    assert tests.runs == 1 and lrs.source == "range test x 2" and lrs.reading.lr_max == found.lr_max
    if given == "optimizer.lr":  # an absolute peak; LRMIN the range test's, scaled
        assert (lrs.lr_max, lrs.lr_min) == (0.5, pytest.approx(2 * found.lr_min))
    else:
        assert (lrs.lr_min, lrs.lr_max) == (1e-4, pytest.approx(2 * found.lr_max))


class Probe:
    """A range-test setup whose test is `run_range_test` (replaced below): nothing is trained."""

    key = {"model": "any", "seed": 0}

    @staticmethod
    def build():
        return None, None, None


def test_cache_false_runs_a_new_range_test_where_a_cached_curve_would_answer(tmp_path, monkeypatch):
    runs = []

    def range_test(model, optimizer, loader, device, finder_cfg, *args, **kwargs):
        runs.append(finder_cfg.cache)
        return textbook_history()

    monkeypatch.setattr(lr_finder, "run_range_test", range_test)
    found = {}
    for cache in ("true", "true", "false"):
        cfg = compose_with(f"lr_finder.cache={cache}", f"lr_finder.cache_dir={tmp_path / 'cache'}")
        found.setdefault(cache, []).append(lr_finder.curve(cfg.lr_finder, Probe(), "cpu"))
    assert runs == [True, False]  # the first test, then the one cache=false forced; the second came from the cache
    assert [curve.cached for curve in found["true"]] == [False, True] and not found["false"][0].cached
    assert found["true"][1].history == found["false"][0].history == textbook_history()


class Reached(Exception):
    """The trainer got its LRs: nothing after that is needed here."""


def lrs_of_a_rank(monkeypatch, synthetic_root, tmp_path, rank: int):
    """Run the trainer as rank `rank` of two torchrun processes up to the point where it has its LRs: what the
    range test ran, what this rank passed to the broadcast, and the LRs it trains with."""
    for name, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", 2)):
        monkeypatch.setenv(name, str(value))
    cfg = compose_with(
        f"data.root={synthetic_root}", "data.limit_train=400", "data.limit_test=300", "batch_size=40",
        "model.width=0.0625", "epochs=2", "logger=none", "progress=false", "device=cpu",
    )  # fmt: skip
    seen = {"tests": 0, "sent": []}
    from_rank_0 = RunLRs(0.01, 0.1, "range test")

    def range_test(cfg, *args, **kwargs):
        seen["tests"] += 1
        return textbook_reading(cfg.lr_finder)

    def broadcast(value):  # what rank 0 sends, every rank receives
        seen["sent"].append(value)
        return value if rank == 0 else from_rank_0

    def training_state(*args, **kwargs):  # the trainer's next step, given the LRs
        raise Reached(next(arg for arg in [*args, *kwargs.values()] if isinstance(arg, RunLRs)))

    monkeypatch.setattr(derive, "read_range", range_test)
    monkeypatch.setattr(ddp, "broadcast", broadcast)
    monkeypatch.setattr(trainer, "_training_state", training_state)
    level = logging.getLogger().level  # (a rank other than 0 turns the root logger down to warnings)
    try:
        with pytest.raises(Reached) as reached:
            trainer.train(cfg, tmp_path)
    finally:
        logging.getLogger().setLevel(level)
    return seen, reached.value.args[0]


def test_under_torchrun_rank_0_alone_runs_the_range_test_and_every_rank_trains_with_its_lrs(
    monkeypatch, synthetic_root, tmp_path
):
    seen, lrs = lrs_of_a_rank(monkeypatch, synthetic_root, tmp_path, rank=1)
    assert seen == {"tests": 0, "sent": [None]} and (lrs.lr_min, lrs.lr_max, lrs.source) == (0.01, 0.1, "range test")
    seen, lrs = lrs_of_a_rank(monkeypatch, synthetic_root, tmp_path, rank=0)
    assert seen["tests"] == 1 and seen["sent"] == [lrs] and lrs.source == "range test"
