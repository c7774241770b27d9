"""How a range test's curve becomes LRMIN and LRMAX: the rules that read it, and the check that warns when a
run's LRs lie where the curve says they should not.

A curve is what the range test recorded: the LR of every step (growing exponentially) and the smoothed
training loss after it, trimmed at both ends (the noisy start, the divergent tail) before anything reads it.
Its *fall* is the distance from its first loss down to its lowest one.

LRMAX, by `lr_finder.rule` (benchmarks/lr_regret.py measures what each costs; the README has the table):
- `steepest` (the default): the LR at which the loss falls fastest, torch-lr-finder's own suggestion. Of the
  rules the benchmark tried it lost the least accuracy, on average and at worst.
- `lowest`: the LR at the lowest loss, the rule before this one. Right for the full network at batch 512
  (0.46, beside Page's hand-tuned 0.4), but it overshoots wherever the test ends before the loss climbs: a
  small network's loss creeps down to LR 5 in a short test, Adam's smoothed loss bottoms out at 0.23.
- `fall_end`: the first LR at which the loss has made 90 % of its fall: `lowest` without the long flat bottom.
- `tenth`: the lowest-loss LR / 10 (fastai's older `lr_min` suggestion).
Every rule's LRMAX is divided by `lr_finder.max_divisor` (default 1).

LRMIN, whatever the rule: where the fall begins, the first LR at which the loss has made `min_drop` (0.1) of
its fall (Smith's lower bound: where the network starts to learn). One Cycle starts and, with no
annihilation, ends there. When that is not below LRMAX, LRMIN = LRMAX / 10.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from resnet9.core.errors import UsageError

FALL_END = 0.9  # `fall_end`: the share of the fall made by LRMAX


@dataclass(frozen=True)
class Curve:
    """A range test's curve as the rules read it: trimmed, as arrays, with its lowest point found."""

    lrs: np.ndarray
    losses: np.ndarray

    @classmethod
    def trimmed(cls, lrs: Sequence[float], losses: Sequence[float], skip_start: int, skip_end: int) -> Curve:
        end = len(lrs) - skip_end
        return cls(np.asarray(lrs[skip_start:end], dtype=float), np.asarray(losses[skip_start:end], dtype=float))

    @property
    def lowest(self) -> int:
        return int(np.argmin(self.losses))

    def first_down(self, share: float) -> int:
        """Index of the first point at which the loss has made `share` of its fall (never past the lowest)."""
        falling = self.losses[: self.lowest + 1]
        threshold = falling[0] - share * (falling[0] - falling[-1])
        return int(np.argmax(falling <= threshold))

    def loss_at(self, lr: float) -> float:
        """The smoothed loss at `lr` (read on a log axis), the curve's last loss beyond its end."""
        return float(np.interp(np.log(lr), np.log(self.lrs), self.losses))


def lowest(curve: Curve) -> float:
    return float(curve.lrs[curve.lowest])


def fall_end(curve: Curve) -> float:
    return float(curve.lrs[curve.first_down(FALL_END)])


def steepest(curve: Curve) -> float:
    falling = curve.losses[: curve.lowest + 1]
    if len(falling) < 3:
        return lowest(curve)
    slopes = np.gradient(falling, np.log(curve.lrs[: curve.lowest + 1]))
    return float(curve.lrs[int(np.argmin(slopes))])


def tenth(curve: Curve) -> float:
    return lowest(curve) / 10


RULES: dict[str, Callable[[Curve], float]] = {
    "steepest": steepest, "lowest": lowest, "fall_end": fall_end, "tenth": tenth,
}  # fmt: skip
DEFAULT_RULE = "steepest"


def lr_pair(curve: Curve, rule: str, max_divisor: float = 1.0, min_drop: float = 0.1) -> tuple[float, float, str]:
    """(LRMIN, LRMAX, the rule in words) read from the curve."""
    lr_max = RULES[rule](curve) / max_divisor
    said = f"LRMAX = {rule}" + (f" / {max_divisor:g}" if max_divisor != 1 else "")
    fall_begins = float(curve.lrs[curve.first_down(min_drop)])
    if fall_begins < lr_max:
        return fall_begins, lr_max, said + f"; LRMIN = first LR {min_drop:g} of the way down to the lowest loss"
    return lr_max / 10, lr_max, said + "; LRMIN = LRMAX / 10 (the loss does not fall below LRMAX)"


def picks(curve: Curve) -> dict[str, float]:
    """Every rule's LRMAX on this curve (recorded and drawn beside the one chosen)."""
    return {name: rule(curve) for name, rule in RULES.items()}


CLIMBING = 0.25  # a loss this share of the fall above the lowest, past it, is climbing


def doubts(curve: Curve, lr_min: float, lr_max: float) -> list[str]:
    """What the curve says against a run's LRs, each as one sentence naming the fix; empty when nothing.
    (The LRs may be a rule's pick scaled, or numbers from the config.)"""
    fall = curve.losses[0] - curve.losses[curve.lowest]
    where = f"LRMAX={lr_max:.3g}"
    fix = "lower it with lr_finder.scale or lr_finder.max_scale, pick another lr_finder.rule, or give optimizer.lr"
    if lr_max > curve.lrs[-1]:
        return [f"{where} lies past the end of the range test's readable curve ({curve.lrs[-1]:.3g}): nothing "
                f"says this network trains there; {fix}"]  # fmt: skip
    climb = curve.loss_at(lr_max) - curve.losses[curve.lowest]
    if lr_max > curve.lrs[curve.lowest] and climb > CLIMBING * fall:
        return [f"{where} lies where the range test's loss is already climbing ({climb:.3g} above its lowest, "
                f"at LR {curve.lrs[curve.lowest]:.3g}); expect a slower run or a diverging one; {fix}"]  # fmt: skip
    if lr_max <= curve.lrs[curve.first_down(0.1)]:
        raise_it = "raise lr_finder.scale or lr_finder.max_scale, or give optimizer.lr"
        return [f"{where} lies where the range test's loss has hardly begun to fall (LRMIN={lr_min:.3g}): the "
                f"network will learn slowly; {raise_it}"]  # fmt: skip
    return []


class LRFinderError(UsageError):
    """The range test produced a curve too short to read."""


@dataclass
class LRRange:
    """A curve read by the configured rule: LRMIN and LRMAX (before any scale), the rule in words, every rule's
    LRMAX, and the curve itself, trimmed once (what the rules, the checks and the plot read) and whole."""

    lr_min: float
    lr_max: float
    rule: str  # lr_finder.rule
    reading: str  # the rule in words, as applied
    picks: dict[str, float]  # every rule's LRMAX on this curve
    curve: Curve  # trimmed
    history: dict[str, list[float]]  # the whole curve, untrimmed
    cached: bool = False
    cache_key: str = ""

    def record(self) -> dict[str, Any]:
        """What lr_finder.json holds: everything but the trimmed arrays (the whole curve is there)."""
        fields = ("lr_min", "lr_max", "rule", "reading", "picks", "history", "cached", "cache_key")
        return {name: getattr(self, name) for name in fields}


def read(history: dict[str, list[float]], finder_cfg: Any, cached: bool = False, cache_key: str = "") -> LRRange:
    """LRMIN and LRMAX off a recorded curve, by `lr_finder.rule`, once the curve is known to be long enough."""
    lrs, losses = history["lr"], history["loss"]
    if len(lrs) < finder_cfg.skip_start + finder_cfg.skip_end + 10:
        raise LRFinderError(
            f"LR range test diverged after {len(lrs)} of {finder_cfg.num_iter} steps (LR {lrs[-1]:.3g}), too few "
            f"to read; lower lr_finder.end_lr, raise lr_finder.diverge_th, or set optimizer.lr and scheduler.lr_min"
        )
    curve = Curve.trimmed(lrs, losses, finder_cfg.skip_start, finder_cfg.skip_end)
    rule = finder_cfg.get("rule", DEFAULT_RULE)
    lr_min, lr_max, said = lr_pair(curve, rule, finder_cfg.max_divisor, finder_cfg.min_drop)
    return LRRange(lr_min, lr_max, rule, said, picks(curve), curve, history, cached, cache_key)
