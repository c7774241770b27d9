"""The console commands (`resnet9-train`, `resnet9-lr-find`, ...; see pyproject.toml's [project.scripts]).

Each runs its module's `main`, as `python -m resnet9.<module>` does. When the command line only asks something
— `--version`, or Hydra's `--help`, `--cfg job`, `--info`, tab completion (`-sc`) — `answer_if_asked` answers
from the configs alone, without importing the trainer and its libraries (torch, albumentations, wandb, ...).
That is what makes `--help` and every press of TAB take about a second instead of four. `python -m
resnet9.<module>` calls it too, before its module imports anything heavy.
"""

from __future__ import annotations

import sys
from datetime import datetime
from importlib import import_module

import hydra
import yaml
from omegaconf import DictConfig, OmegaConf

from resnet9 import __version__

# Hydra's flags that print something and exit before the task runs (`--cfg`: print the config instead).
ANSWERED_BY_HYDRA = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}


def _run(module: str, config_name: str | None) -> None:
    answer_if_asked(config_name)
    import_module(f"resnet9.{module}").main()


def answer_if_asked(config_name: str | None) -> None:
    """When the command line only asks something (`--version`; `--help`, `--cfg`, ... of a Hydra command with
    config `config_name`), answer it and exit; otherwise return, and the command runs."""
    asked = set(sys.argv[1:])
    if "--version" in asked:
        print(version_line())
        sys.exit(0)
    if config_name is not None and ANSWERED_BY_HYDRA & asked:
        _answer_from_configs(config_name)
        sys.exit(0)


def version_line() -> str:
    return f"resnet9 {__version__} (Hydra {hydra.__version__})"


def _answer_from_configs(config_name: str) -> None:
    """Hydra's answer, composed from the package's configs; the task itself never runs."""
    # The resolvers conf/config.yaml names its output folders with, as distributed.register_resolvers defines
    # them for one process (that module imports torch): Hydra may resolve them while it answers.
    resolvers = {
        "launch_time": lambda pattern: datetime.now().strftime(pattern),
        "main_rank_only": lambda value: value,
        "rank_suffix": lambda: "",
    }
    for name, resolver in resolvers.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)
    OmegaConf.register_new_resolver("shown", _shown, replace=True)
    from resnet9.core.errors import hydra_errors_in_one_line  # (hydra and the standard library only)

    with hydra_errors_in_one_line():
        hydra.main(version_base="1.3", config_path="conf", config_name=config_name)(_never_called)()


def _shown(*keys: str, _root_: DictConfig) -> str:
    """`${shown:epochs,seed}` in a help text -> `epochs=24 seed=0`: the keys' values in the composed config, as an
    override writes them, so that the help never restates a default the YAML already holds."""
    values = [OmegaConf.select(_root_, key) for key in keys]
    return " ".join(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                    for key, value in zip(keys, values, strict=True))  # fmt: skip


def _never_called(_cfg: object) -> None:
    raise AssertionError("Hydra runs the task only when asked to train; this command asked something else")


def train() -> None:
    _run("train", "config")


def lr_find() -> None:
    _run("lr_find", "lr_find")


def summary() -> None:
    _run("summary", "summary")


def evaluate() -> None:
    _run("evaluate", "evaluate")


def predict() -> None:
    answer_if_asked(None)
    sys.exit(import_module("resnet9.predict").main())


def report() -> None:
    _run("report", None)
