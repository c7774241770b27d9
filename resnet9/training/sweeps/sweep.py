"""What a sweep is: its id, the keys it varies, and the setting of each job — for W&B names and the report.

When a `--multirun` starts, the report callback writes `<sweep folder>/sweep.json`: the sweep's id (after
its folder) and the keys it varies (the command line's sweep overrides such as `seed=0,1,2`, and a search
sweeper's `hydra.sweeper.params`). Each job reads it to name itself after the values it was given for those
keys (`lr_finder.scale=0.5 seed=1`) and to join the W&B group of its setting: the same values but the seed,
so that W&B's grouped views average over seeds, never over the settings being compared. A sweep folder
without sweep.json (made before it existed) falls back to the keys whose values differ between its jobs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from resnet9.core import files
from resnet9.core.errors import UsageError

FILE = "sweep.json"
SEED = "seed"  # averaged over: never part of a setting


def sweep_id(sweep_dir: Path) -> str:
    """multirun/<date>/<time> -> sweep-<date>_<time>."""
    return f"sweep-{sweep_dir.parent.name}_{sweep_dir.name}"


def task_overrides(hydra_cfg: DictConfig) -> list[str]:
    """The command line's overrides as written: unresolved, so `optimizer.lr=${oops}` stays a string here and
    fails where the config is validated, in one line."""
    return OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)


def varied_keys(config: DictConfig) -> list[str]:
    """The keys a multirun's config varies: sweep overrides on the command line, and a sweeper's params."""
    overrides = OverridesParser.create().parse_overrides(task_overrides(config.hydra))
    keys = [override.key_or_group for override in overrides if override.is_sweep_override()]
    keys += list(config.hydra.sweeper.get("params") or {})
    return sorted(set(keys))


def write(sweep_dir: Path, config: DictConfig) -> None:
    """sweep.json, as a --multirun starts. A folder that already holds another sweep's jobs is refused: Hydra
    numbers jobs by position, so job 2 of another command is another setting, and a report would pool both."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    description = {"id": sweep_id(sweep_dir), "varies": varied_keys(config), "command": task_overrides(config.hydra)}
    description |= study_of(sweep_dir, config)
    earlier = read(sweep_dir)
    has_jobs = any(sweep_dir.glob("*/metrics.json"))
    if earlier is not None and has_jobs and _changed(earlier, description):
        command = earlier.get("command")
        shown = " ".join(map(str, command)) if isinstance(command, list) else "not recorded"
        raise UsageError(
            f"{sweep_dir} holds the jobs of a sweep with other overrides ({shown or 'none'}); rerun those to resume "
            f"it, or choose a new hydra.sweep.dir (job folders of two sweeps would mix, and so would their results)"
        )
    files.write_json(sweep_dir / FILE, description)


def study_of(sweep_dir: Path, config: DictConfig) -> dict[str, Any]:
    """An Optuna search's study (its database, password masked, and its name, for the report), or nothing else."""
    sweeper = config.hydra.sweeper
    if not str(sweeper.get("_target_", "")).endswith("optuna_sweeper.OptunaSweeper"):
        return {}
    from resnet9.training.sweeps.search import hide_password, storage_url

    # (its password masked: the report finds it where the sweeper keeps it, or where libpq looks for one)
    storage, _ = hide_password(storage_url(sweeper.storage, sweep_dir))
    return {"study": {"storage": storage, "name": sweeper.study_name}}


def _changed(earlier: dict[str, Any], now: dict[str, Any]) -> bool:
    """Another sweep than the one in the folder: its job numbers would name other settings. (A folder from before
    sweep.json recorded the command is compared by the keys it varies.)"""
    if "command" in earlier:
        return earlier["command"] != now["command"] or earlier["varies"] != now["varies"]
    return earlier["varies"] != now["varies"]


def read(sweep_dir: Path) -> dict[str, Any] | None:
    """sweep.json of a sweep folder, or None (absent, or not one we can read)."""
    try:
        description = json.loads((sweep_dir / FILE).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(description, dict) and isinstance(description.get("varies"), list)
    return description if ok else None


def setting(overrides: list[str], keys: set[str] | list[str], with_seed: bool = False, short: bool = False) -> str:
    """The overrides of `keys` (the seed only `with_seed`), sorted: e.g. "lr_finder.scale=0.5 seed=1".

    `short`: for a display name, a search's long floats to 4 significant digits (`lr_finder.max_scale=1.145`);
    never for grouping, where two close values are two settings."""
    chosen = []
    for override in overrides:
        key, value = key_and_value(override)
        if key in keys and (with_seed or key != SEED):
            chosen.append(f"{key}={_short(value) if short else value}")
    return " ".join(sorted(chosen))


def key_and_value(override: str) -> tuple[str, str]:
    """`++label_smoothing=0.2` -> ("label_smoothing", "0.2"): the key as the sweep's keys name it."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _short(value: str) -> str:
    try:
        return f"{float(value):.4g}" if len(value) > 8 else value
    except ValueError:
        return value


def keys_that_differ(jobs_overrides: list[list[str]]) -> set[str]:
    """For a sweep without sweep.json: the keys whose values differ between jobs, or that only some jobs set."""
    values: dict[str, list[str]] = {}
    for overrides in jobs_overrides:
        for override in overrides:
            key, value = key_and_value(override)
            values.setdefault(key, []).append(value)
    return {key for key, seen in values.items() if len(set(seen)) > 1 or len(seen) < len(jobs_overrides)}
