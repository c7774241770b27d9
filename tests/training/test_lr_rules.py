"""The rules that read a range test's curve (resnet9/training/lr/rules.py), on textbook curves and on recorded ones."""

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from resnet9.training.lr import rules as lr_rules
from resnet9.training.lr.rules import Curve


def textbook() -> Curve:
    """Flat, a steep fall centred at 1e-2, lowest near 0.1, then a climb (untrimmed: 100 points)."""
    lrs = np.logspace(-5, 1, 100)
    x = np.log10(lrs)
    losses = 2.3 - 1.0 / (1 + np.exp(-(x + 2) * 4)) + 0.8 * np.clip(x + 1, 0, None) ** 2
    return Curve.trimmed(lrs.tolist(), losses.tolist(), skip_start=10, skip_end=5)


def long_flat_bottom() -> Curve:
    """A fall centred at 1e-2 that is done by 0.1, then a bottom that creeps down 2 % more up to LR 5: the
    curve of a small network in a short test, whose lowest point lies far past where the fall ended."""
    lrs = np.logspace(-4, np.log10(5), 90)
    x = np.log10(lrs)
    losses = 2.3 - 1.0 / (1 + np.exp(-(x + 2) * 6)) - 0.01 * (x + 1).clip(0)
    return Curve(lrs, losses)


def test_lowest_reads_the_lowest_loss_and_lrmin_where_the_fall_begins():
    curve = textbook()
    lr_min, lr_max, reading = lr_rules.lr_pair(curve, "lowest")
    assert lr_max == curve.lrs[np.argmin(curve.losses)] and 0.05 < lr_max < 0.2
    # The sigmoid has made 10% of its fall where 1 / (1 + exp(-4 (x + 2))) = 0.1, i.e. x = -2 - ln(9) / 4.
    assert lr_min == pytest.approx(10 ** (-2 - np.log(9) / 4), rel=0.15)
    assert reading == "LRMAX = lowest; LRMIN = first LR 0.1 of the way down to the lowest loss"
    assert lr_rules.lr_pair(curve, "lowest", max_divisor=4)[1] == pytest.approx(lr_max / 4)
    later = lr_rules.lr_pair(curve, "lowest", min_drop=0.5)[0]
    assert later == pytest.approx(1e-2, rel=0.15)  # half way down is the sigmoid's centre


@pytest.mark.parametrize(
    ("rule", "expected", "rel"),
    [
        ("steepest", 1e-2, 0.15),  # the sigmoid's centre
        ("fall_end", 10 ** (-2 + np.log(9) / 4), 0.25),  # 90 % of the sigmoid's fall (the climb adds a little)
        ("tenth", None, 1e-9),  # a tenth of the lowest-loss LR
    ],
)
def test_each_rule_reads_the_textbook_curve_where_it_says(rule, expected, rel):
    curve = textbook()
    lowest = lr_rules.lowest(curve)
    expected = {"tenth": lowest / 10}.get(rule, expected)
    assert lr_rules.RULES[rule](curve) == pytest.approx(expected, rel=rel)
    lr_min, lr_max, _ = lr_rules.lr_pair(curve, rule)
    assert 0 < lr_min < lr_max


def test_on_a_long_flat_bottom_fall_end_stops_where_the_fall_is_done():
    curve = long_flat_bottom()
    assert lr_rules.lowest(curve) == pytest.approx(5, rel=0.01)  # the lowest point: the curve's very end
    assert 0.02 < lr_rules.fall_end(curve) < 0.1  # 90 % of the fall: just past the sigmoid's 90 % point


def test_a_drop_past_the_minimum_is_ignored():
    # The loss falls gently to its lowest point, then a sharp *drop* on the way up (noise) follows it.
    lrs = np.logspace(-4, 0, 60).tolist()
    losses = [2.3 - 0.01 * i for i in range(30)] + [3.0 - 0.3 * (i % 2) for i in range(30)]
    curve = Curve.trimmed(lrs, losses, skip_start=5, skip_end=5)
    lr_min, lr_max, _ = lr_rules.lr_pair(curve, "lowest")
    assert lr_min < lr_max == pytest.approx(lrs[29])
    # 10% of the way from 2.25 (the first point kept, index 5) down to 2.01 (index 29) is 2.226: index 8
    assert lr_min == pytest.approx(lrs[8])


def test_falls_back_to_a_tenth_of_lrmax_when_there_is_no_fall():
    lrs = np.logspace(-4, 0, 40).tolist()
    losses = [2.0 + 0.01 * i for i in range(40)]  # rises from the start
    for rule in lr_rules.RULES:
        lr_min, lr_max, reading = lr_rules.lr_pair(Curve.trimmed(lrs, losses, 5, 5), rule)
        assert lr_min == pytest.approx(lr_max / 10) and "LRMAX / 10" in reading


def test_schema_offers_exactly_the_rules():
    from typing import get_args

    from resnet9.training.config.schema import LRFinderConfig

    assert set(get_args(LRFinderConfig.model_fields["rule"].annotation)) == set(lr_rules.RULES)
    conf = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "config.yaml")
    assert conf.lr_finder.rule == lr_rules.DEFAULT_RULE  # the default, written in the YAML


def test_no_doubt_about_a_pair_inside_the_fall():
    curve = textbook()
    assert lr_rules.doubts(curve, *lr_rules.lr_pair(curve, "lowest")[:2]) == []
    assert lr_rules.doubts(curve, *lr_rules.lr_pair(curve, "steepest")[:2]) == []


def test_doubts_name_what_is_wrong_and_the_fix():
    curve = textbook()
    lowest = lr_rules.lowest(curve)
    (climbing,) = lr_rules.doubts(curve, 1e-3, 4 * lowest)  # e.g. lr_finder.scale=4
    assert f"LRMAX={4 * lowest:.3g} lies where the range test's loss is already climbing" in climbing
    assert "lr_finder.scale" in climbing and "optimizer.lr" in climbing
    (beyond,) = lr_rules.doubts(curve, 1e-3, 50.0)
    assert "past the end of the range test's readable curve" in beyond
    (too_low,) = lr_rules.doubts(curve, 1e-5, 1e-4)
    assert "has hardly begun to fall" in too_low and "raise lr_finder.scale" in too_low
    assert lr_rules.doubts(curve, 1e-3, 1.2 * lowest) == []  # a little past the lowest point: still the valley


RECORDED = json.loads((Path(__file__).parents[1] / "recorded" / "lr_curves.json").read_text())["curves"]
FULL_WIDTH = "model.width=1 batch_size=512 data.limit_train=50000"


def recorded(setting: str) -> Curve:
    return Curve.trimmed(RECORDED[setting]["lr"], RECORDED[setting]["loss"], skip_start=10, skip_end=5)


@pytest.mark.parametrize("setting", list(RECORDED))
def test_every_rule_reads_every_recorded_curve(setting):
    curve = recorded(setting)
    for rule in lr_rules.RULES:
        lr_min, lr_max, _ = lr_rules.lr_pair(curve, rule)
        assert curve.lrs[0] <= lr_min < lr_max <= curve.lrs[-1], rule
    for rule, pair in RECORDED[setting].get("pairs", {}).items():  # what the README's regret table trained with
        assert lr_rules.lr_pair(curve, rule)[:2] == pytest.approx(pair, rel=1e-6), rule


def test_the_default_rule_stays_below_the_overshooting_lowest_point():
    # Where the test ends before the loss climbs (a small network; Adam's smoothed bottom), `lowest` overshot
    # the best peak of the grid by 10-50x; the default reads the fall instead.
    for setting, best_peak in (("model.width=0.125", 0.4), ("model.width=0.25 optimizer=adam", 0.004)):
        curve = recorded(setting)
        assert lr_rules.lowest(curve) > 10 * best_peak
        assert best_peak / 4 < lr_rules.RULES[lr_rules.DEFAULT_RULE](curve) < 4 * best_peak


def test_doubts_on_a_recorded_curve():
    curve = recorded(FULL_WIDTH)  # the full network: a sharp climb past its lowest point
    lr_min, lr_max, _ = lr_rules.lr_pair(curve, lr_rules.DEFAULT_RULE)
    assert lr_rules.doubts(curve, lr_min, lr_max) == []
    (doubt,) = lr_rules.doubts(curve, lr_min, 4 * lr_rules.lowest(curve))  # lr_finder.max_scale=4 on `lowest`
    assert "already climbing" in doubt
