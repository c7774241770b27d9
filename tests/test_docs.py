"""The defaults the README and docs/ state are the defaults the configs compose: read from the Markdown itself.

Every table whose first two columns are `key` and `default` is parsed row by row; so are the defaults stated in
running text (`lr_finder.num_iter` (100), ...), each found by its phrase. A default changed on one side only
fails here, and so does a phrase or table that can no longer be read.
"""

import functools
import os
import re
from pathlib import Path
from unittest import mock

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TABLE_PAGES = ("README.md", "docs/configuration.md", "docs/training.md")
ABSENT = object()


def table_rows(page: str, key_heading: str = "key") -> list[tuple[str, int, str, str]]:
    """(page, line, key cell, default cell) of every row of every `| key | default | ... |` table in `page`."""
    rows, in_table = [], False
    for number, line in enumerate((REPO / page).read_text().splitlines(), start=1):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells[:2] == [key_heading, "default"]:
            in_table = True
        elif not cells:
            in_table = False
        elif in_table and not set(cells[0]) <= set("-: "):
            rows.append((page, number, cells[0], cells[1]))
    return rows


def documented_defaults(page: str) -> list[tuple[str, str, str]]:
    """(where, key, default text) for each key of the page's tables; a cell naming several keys gives each its own
    default (`a`, `b` | 1, 2 and `a` / `b` | 1 / 2), or one default for all. `lr_finder.*`-style rows name none."""
    found = []
    for page_name, line, key_cell, default_cell in table_rows(page):
        keys = re.findall(r"`([^`]+)`", key_cell)
        defaults = [text for text in re.split(r"\s*[,/]\s*", default_cell) if text]
        if any("*" in key for key in keys):
            continue
        if len(defaults) == 1:
            defaults *= len(keys)
        where = f"{page_name}:{line}"
        if len(keys) != len(defaults):  # a row this reader cannot pair up: reported by the test, not skipped
            found.append((where, key_cell, default_cell))
            continue
        found += [(where, key, default) for key, default in zip(keys, defaults, strict=True)]
    return found


def value(text: str):
    """A default as the docs write it (`auto`, null, true, 0.0, 1e-5, 512) -> the Python value it stands for."""
    text = text.strip().strip("`")
    if text == "null":
        return None
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def same(documented, configured) -> bool:
    """Equal, and of the same kind: `false` is not 0, null is not "null", 10 is 10.0."""
    if documented is None or configured is None or isinstance(documented, bool) or isinstance(configured, bool):
        return documented is configured
    return documented == configured


@functools.cache
def composed(*overrides: str) -> dict:
    """The composed config, resolved, as a plain dict: what a run without overrides (besides these) gets, in an
    environment that sets neither RESNET9_DATA nor RESNET9_CACHE."""
    with mock.patch.dict(os.environ), initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in ("RESNET9_DATA", "RESNET9_CACHE"):
            os.environ.pop(name, None)
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        resolved = OmegaConf.to_container(job, resolve=True)
        resolved["hydra"] = {"sweeper": OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)}
    return resolved


def configured(key: str, *overrides: str):
    node = composed(*overrides)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return ABSENT
        node = node[part]
    return node


TABLE_DEFAULTS = [row for page in TABLE_PAGES for row in documented_defaults(page)]


def test_every_key_default_table_is_read():
    """The reader finds the tables (a renamed column would otherwise leave nothing to check) and pairs every row."""
    for page in TABLE_PAGES:
        assert len(documented_defaults(page)) >= 5, f"no | key | default | table read in {page}"
    assert len(TABLE_DEFAULTS) >= 40
    keys = {key for _, key, _ in TABLE_DEFAULTS}
    assert {"epochs", "seed", "device", "data.root", "resume", "logger.group", "ema.start_epoch"} <= keys


@pytest.mark.parametrize("where, key, default", TABLE_DEFAULTS, ids=[f"{w}:{k}" for w, k, _ in TABLE_DEFAULTS])
def test_each_documented_default_is_the_composed_configs(where, key, default):
    assert not key.startswith("`"), f"{where}: cannot pair the keys {key} with the defaults {default}"
    found = configured(key)
    assert found is not ABSENT, f"{where}: `{key}` is no key of the composed config"
    assert same(value(default), found), f"{where}: `{key}` is documented as {default}, the config gives {found!r}"


# Defaults stated in running text: (page, the phrase with the default as its one group, the key, its config's
# overrides). Each phrase must occur exactly once in the page (whitespace and line breaks collapsed).
OPTUNA = ("hparams_search=optuna",)
PROSE = [
    ("README.md", r"a (\d+)-step exponential range test", "lr_finder.num_iter", ()),
    ("README.md", r"range test from (\S+) to \d+", "lr_finder.start_lr", ()),
    ("README.md", r"range test from \S+ to (\d+)", "lr_finder.end_lr", ()),
    ("README.md", r"SGD, Nesterov momentum ([\d.]+)", "optimizer.momentum", ()),
    ("README.md", r"SGD, Nesterov momentum [\d.]+, weight decay (\d+e-\d+)", "optimizer.weight_decay", ()),
    ("docs/range-test.md", r"`lr_finder\.num_iter` \((\d+)\)", "lr_finder.num_iter", ()),
    ("docs/range-test.md", r"`lr_finder\.start_lr` \(([^)]+)\)", "lr_finder.start_lr", ()),
    ("docs/range-test.md", r"`lr_finder\.end_lr` \(([^)]+)\)", "lr_finder.end_lr", ()),
    ("docs/range-test.md", r"\(`smooth_f` ([\d.]+)\)", "lr_finder.smooth_f", ()),
    ("docs/range-test.md", r"`diverge_th` \((\d+)\)", "lr_finder.diverge_th", ()),
    ("docs/range-test.md", r"with its first (\d+) and last \d+ points trimmed", "lr_finder.skip_start", ()),
    ("docs/range-test.md", r"with its first \d+ and last (\d+) points trimmed", "lr_finder.skip_end", ()),
    ("docs/range-test.md", r"`lr_finder\.rule=(\w+)`, the default", "lr_finder.rule", ()),
    ("docs/range-test.md", r"`lr_finder\.max_divisor`, default ([\d.]+)\)", "lr_finder.max_divisor", ()),
    ("docs/range-test.md", r"`lr_finder\.min_drop` \(default ([\d.]+)\)", "lr_finder.min_drop", ()),
    ("docs/training.md", r"multiplied by a constant ([\d.]+) \(`model\.logit_scale`", "model.logit_scale", ()),
    ("docs/training.md", r"`sgd` \(default: Nesterov momentum ([\d.]+)", "optimizer.momentum", ()),
    ("docs/training.md", r"Nesterov momentum [\d.]+, weight decay (\d+e-\d+), mean loss", "optimizer.weight_decay", ()),
    ("docs/training.md", r"\(`data\.num_workers`, default (\d+)\)", "data.num_workers", ()),
    ("docs/sweeps.md", r"TPE sampler \(seed (\d+)\)", "hydra.sweeper.sampler.seed", OPTUNA),
    ("docs/sweeps.md", r"TPE sampler \(seed \d+\), (\d+) trials by default", "hydra.sweeper.n_trials", OPTUNA),
    ("docs/sweeps.md", r"\(`max_failure_rate: ([\d.]+)`\)", "hydra.sweeper.max_failure_rate", OPTUNA),
    ("docs/sweeps.md", r"`hydra\.sweeper\.heartbeat_s` = (\d+) s", "hydra.sweeper.heartbeat_s", OPTUNA),
    ("docs/sweeps.md", r"`MedianPruner` by default: after (\d+) trials", "hydra.sweeper.pruner.n_startup_trials",
     OPTUNA),
    ("docs/sweeps.md", r"after \d+ trials, from epoch (\d+) on", "hydra.sweeper.pruner.n_warmup_steps", OPTUNA),
]  # fmt: skip


@pytest.mark.parametrize("page, phrase, key, overrides", PROSE, ids=[f"{p}:{k}" for p, _, k, _ in PROSE])
def test_each_default_stated_in_the_text_is_the_composed_configs(page, phrase, key, overrides):
    text = " ".join((REPO / page).read_text().split())
    found = re.findall(phrase, text)
    assert len(found) == 1, f"{page}: the phrase {phrase!r} occurs {len(found)} times; it must name the default once"
    assert same(value(found[0]), configured(key, *overrides)), f"{page} says {key}={found[0]}"


def test_the_documented_samplers_and_pruners_are_the_configs():
    text = " ".join((REPO / "docs/sweeps.md").read_text().split())
    pruner = re.search(r"Optuna's `(\w+)` by default", text).group(1)
    assert configured("hydra.sweeper.pruner._target_", *OPTUNA) == f"optuna.pruners.{pruner}"
    assert "TPE sampler" in text and configured("hydra.sweeper.sampler._target_", *OPTUNA).endswith(".TPESampler")


def test_the_slurm_launchers_documented_defaults_are_its_configs():
    """docs/cluster.md's table of `hydra/launcher=slurm` (keys under `hydra.launcher.`) against the composed launcher
    config; a default cell may explain itself after the value: `null` (the cluster's default)."""
    rows = table_rows("docs/cluster.md", key_heading="key (`hydra.launcher.`)")
    assert len(rows) >= 9, rows
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    for where, line, key_cell, default_cell in rows:
        (key,) = re.findall(r"`([^`]+)`", key_cell)
        default = re.match(r"`?([^`\s]+)`?", default_cell).group(1)
        node = launcher
        for part in key.split("."):
            node = node[part]
        assert same(value(default), node), (
            f"{where}:{line}: `{key}` is documented as {default}, the config gives {node!r}"
        )


def test_every_test_a_page_names_exists():
    """A promise's `tests/<file>.py::<test>` names a test that is there: renamed or removed, the page must follow."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    named = {(page.name, match) for page in pages for match in re.findall(r"tests/[\w/]+\.py::\w+", page.read_text())}
    assert len(named) >= 100
    missing = []
    for page, reference in sorted(named):
        path, test = reference.split("::")
        source = (REPO / path).read_text() if (REPO / path).is_file() else ""
        if not re.search(rf"^(?:async )?def {test}\(|^    def {test}\(", source, re.M):
            missing.append(f"{page}: {reference}")
    assert missing == []
