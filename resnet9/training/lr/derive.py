"""A run's LRMIN and LRMAX, as one straight path. Numbers given in the config are taken as they are; where
`optimizer.lr` or `scheduler.lr_min` is auto:

    probe (what the test trains) -> curve (the cache's, or a new test's) -> the rule's reading -> scaled, checked

each step once (range_test.probe, range_test.curve, rules.read, `scaled`). The reading, with its curve, stays in
memory for whoever records or plots it: lr_finder.json and lr_finder.png here, the tracker's table later.
No rule fits every curve (torch-lr-finder's maintainers say as much): the plot shows every rule's pick, and
`optimizer.lr` / `scheduler.lr_min` accept numbers that override either LR, `lr_finder.scale` both.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from resnet9.analysis import plots
from resnet9.core import files
from resnet9.core.errors import ConfigError
from resnet9.data.datasets import ImageData
from resnet9.training.engine.loop import StepSettings
from resnet9.training.engine.state import RunLRs
from resnet9.training.lr import range_test, rules

log = logging.getLogger(__name__)

JSON_NAME, PLOT_NAME = "lr_finder.json", "lr_finder.png"


def lrs_for_run(cfg: DictConfig, data: ImageData, settings: StepSettings, out_dir: Path) -> RunLRs:
    """LRMIN and LRMAX: the config's numbers where given; where auto, the range test's reading, scaled."""
    lr_max, lr_min = cfg.optimizer.lr, cfg.scheduler.get("lr_min")  # (a torch schedule may have no lr_min)
    if lr_max != "auto" and lr_min != "auto":
        return RunLRs(None if lr_min is None else float(lr_min), float(lr_max), "config")
    reading = read_range(cfg, data, settings, out_dir, cfg.progress)
    return scaled(reading, lr_min, lr_max, cfg.lr_finder)


def read_range(
    cfg: DictConfig, data: ImageData, settings: StepSettings, out_dir: Path, progress: bool = True
) -> rules.LRRange:
    """probe -> curve -> the rule's reading, recorded in `out_dir` (lr_finder.json now, lr_finder.png on the
    figure thread). What `python -m resnet9.lr_find` prints."""
    setup = range_test.probe(cfg, data, settings)
    curve = range_test.curve(cfg.lr_finder, setup, settings.device, progress)
    reading = rules.read(curve.history, cfg.lr_finder, curve.cached, curve.cache_key)
    files.write_json(out_dir / JSON_NAME, reading.record())
    plots.in_background(draw, reading, cfg.lr_finder, out_dir / PLOT_NAME)
    return reading


def scaled(reading: rules.LRRange, lr_min: float | str | None, lr_max: float | str, finder_cfg: DictConfig) -> RunLRs:
    """The reading's LRs times `lr_finder.scale` and `max_scale` / `min_scale` where the config says auto (a
    number given stays as it is; a schedule without `lr_min` takes the reading's), checked against the curve."""
    max_scale, min_scale = finder_cfg.scale * finder_cfg.max_scale, finder_cfg.scale * finder_cfg.min_scale
    source = "range test (cached)" if reading.cached else "range test"
    if (max_scale, min_scale) != (1, 1):
        source += f" x {max_scale:g}" if max_scale == min_scale else f" x {min_scale:g} (LRMIN), {max_scale:g} (LRMAX)"
    lr_max = reading.lr_max * max_scale if lr_max == "auto" else float(lr_max)
    lr_min = reading.lr_min * min_scale if lr_min in ("auto", None) else float(lr_min)
    for doubt in rules.doubts(reading.curve, lr_min, lr_max):
        log.warning(doubt)
    if not lr_min < lr_max:
        raise ConfigError(
            f"LRMIN={lr_min:.4g} is not below LRMAX={lr_max:.4g} (from {source} and the config); "
            f"set both optimizer.lr and scheduler.lr_min, or leave both auto"
        )
    return RunLRs(lr_min, lr_max, source, reading)


def draw(reading: rules.LRRange, finder_cfg: DictConfig, path: Path) -> Path:
    """lr_finder.png: the curve as the rule reads it (trimmed), LRMIN, LRMAX and every rule's pick."""
    steps = len(reading.history["lr"])
    span = f"{finder_cfg.start_lr:g} to {finder_cfg.end_lr:g}"
    title = f"LR range test: {steps} steps, {span}; LRMAX rule: {reading.rule}"
    return plots.lr_range_test(reading.curve.lrs, reading.curve.losses, reading.record(), title, path)
