"""The search's sampler when its seed is fixed: built afresh for every trial, seeded from (that seed, the trial's
number). Imported only where a search runs (it needs Optuna, the `search` extra).

Why per trial: Optuna numbers a study's trials once, over every worker and invocation, so the number is what tells
two trials apart. Workers started together with one sampler seeded alike (the default:
`hydra.sweeper.sampler.seed: 0`) would draw the same first values; seeded per trial, trial 0 and trial 1 draw
differently whoever asks for them. A single worker's search stays reproducible: trial n draws from the seed, n and
the trials the study held when it asked, and a rerun that continues a study draws for new numbers, so new values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial `number` of a search seeded `seed` (a hash: neighbouring seeds and numbers share
    nothing, unlike seed + number, where seed 1's trial 0 would be seed 0's trial 1)."""
    digest = hashlib.sha256(f"resnet9 trial seed {seed} {number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class TrialSeededSampler(BaseSampler):
    """The sampler `build(seed)` makes, a new one for each trial with `trial_seed(seed, trial.number)`; every call
    about a trial goes to that trial's sampler. Fits samplers that read what they learn from the study (TPE, random,
    GP, CMA-ES, NSGA-II); a quasi-random sequence (QMCSampler) is scrambled anew per trial, so its points behave as
    random ones: give it `seed: null` to keep one sequence per worker."""

    def __init__(self, build: Callable[[int], BaseSampler], seed: int) -> None:
        self._build, self._seed = build, seed
        self._of_trial: dict[int, BaseSampler] = {}  # trials asked for and not yet told, by number
        self._latest = build(seed)  # (for a call about a trial this process did not ask for)

    def _sampler(self, trial: FrozenTrial) -> BaseSampler:
        return self._of_trial.get(trial.number, self._latest)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._latest = self._of_trial[trial.number] = self._build(trial_seed(self._seed, trial.number))
        self._latest.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._sampler(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._sampler(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._sampler(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._of_trial.pop(trial.number, self._latest).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing: each trial's seed is its own (Optuna calls this for parallel `optimize`, which we do not use)."""
