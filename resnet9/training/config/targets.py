"""The `_target_`s a config names: imported and checked against their signatures before any work, or refused.

Two kinds of config reach `hydra.utils.instantiate`, and they are trusted differently:

- The configuration a person composes and runs (the package's conf/, `--config-dir`, the command line) may
  name any importable callable. `check_callables` imports each `_target_` and checks the keys given against its
  signature, so a typo is one line before the data is read:
  `model.depth is not an argument of mymodels.TinyNet(num_classes, width)`.
- A config read back from disk (a checkpoint's saved config) names nothing on its own authority: every
  `_target_` in it must be one that the package's conf/ or the user's own config folder names (`permitted`),
  else `check_permitted` refuses it before anything is imported.

What the trainer passes to each group's callable itself (the extension interface, written down once here):
`SUPPLIED` are the arguments it adds at the call, `CONSUMED` the keys it reads and does not pass on.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from resnet9.core.errors import ConfigError, first_line

# group -> the arguments the trainer passes to the group's callable when it builds it (training/engine/build.py).
SUPPLIED: dict[str, tuple[str, ...]] = {
    "optimizer": ("params", "lr"),  # partial: called with the model's parameters and LRMAX
    # partial: of these, the ones its signature takes (a torch scheduler class takes the optimizer alone)
    "scheduler": ("optimizer", "lr_min", "lr_max", "epochs", "steps_per_epoch"),
    "logger": ("config", "dir", "name", "group", "run_id", "tags", "system_metrics"),  # partial, one per run
}
# group -> keys the trainer reads itself and does not pass to the callable.
CONSUMED: dict[str, tuple[str, ...]] = {
    "data": ("num_workers", "num_classes", "channels", "image_size", "mean", "std"),
    "scheduler": ("lr_min", "interval", "monitor"),  # LRMIN (passed on where taken), when it steps, on what
}
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
PACKAGE_CONF = Path(__file__).resolve().parents[2] / "conf"


def locate(dotted: str, key: str) -> Any:
    """The object `dotted` names (module path, then attributes), or a ConfigError naming the config key."""
    parts = dotted.split(".") if isinstance(dotted, str) else []
    if not dotted or not all(part.isidentifier() for part in parts):
        raise ConfigError(f"{key}._target_ must be a dotted name like mypackage.MyClass, got {dotted!r}")
    if dotted in MOVED:  # one of the package's own, under the name an earlier version gave it
        raise ConfigError(f"{key}._target_={dotted} was renamed {MOVED[dotted]} (resnet9 moved its modules); "
                          f"write that")  # fmt: skip
    for split in range(len(parts), 0, -1):  # the longest importable module prefix
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError as err:
            if err.name and ".".join(parts[:split]).startswith(err.name):
                continue  # not a module: maybe an attribute of a shorter one
            raise ConfigError(f"{key}._target_={dotted} failed to import ({err}); fix that module") from None
        except Exception as err:  # the module itself raised while importing
            raise ConfigError(
                f"{key}._target_={dotted}: importing {'.'.join(parts[:split])} raised {type(err).__name__}: "
                f"{first_line(err, '')}; fix that module"
            ) from None
        for attribute in parts[split:]:
            if not hasattr(found, attribute):
                raise ConfigError(
                    f"{key}._target_={dotted}: {'.'.join(parts[:split])} has no {attribute!r}; check the spelling"
                )
            found = getattr(found, attribute)
        return found
    raise ConfigError(
        f"{key}._target_={dotted} cannot be imported (no module {parts[0]!r}); put its folder on PYTHONPATH "
        f"(e.g. PYTHONPATH=. when it sits where you run) or check the spelling"
    )


def check_callables(config: dict[str, Any], groups: Iterable[str]) -> None:
    """Every `_target_` under the given top-level groups imports and accepts the keys given with it."""
    for group in groups:
        node = config.get(group)
        if group == "callbacks":  # a mapping of named callbacks, each with its own _target_
            for name, callback in (node or {}).items():
                _check_node(callback, f"callbacks.{name}", (), ())
        elif isinstance(node, dict):
            supplied = SUPPLIED.get(group, ())
            if group == "scheduler" and "lr_min" not in node:  # no LRMIN to pass: a schedule that needs one lacks it
                supplied = tuple(name for name in supplied if name != "lr_min")
            _check_node(node, group, supplied, CONSUMED.get(group, ()))


def _check_node(node: Any, key: str, supplied: tuple[str, ...], consumed: tuple[str, ...]) -> None:
    if not isinstance(node, dict) or "_target_" not in node:
        raise ConfigError(f"{key} must be a mapping with a _target_ (the callable to build); e.g. see conf/")
    target = locate(node["_target_"], key)
    given = [k for k in node if k not in HYDRA_KEYS and k not in consumed]
    for name, value in _nested(node, key):
        _check_node(value, name, (), ())
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # some builtins have no signature to read: nothing to check against
        return
    params = signature.parameters
    shown = f"{node['_target_']}({', '.join(p for p in params if params[p].kind not in _VARIADIC)})"
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        for name in given:
            if name not in params or params[name].kind is inspect.Parameter.POSITIONAL_ONLY:
                raise ConfigError(f"{key}.{name} is not an argument of {shown}; remove it or check the spelling")
    positional = len(node.get("_args_") or [])
    for index, (name, param) in enumerate(params.items()):
        needed = param.default is inspect.Parameter.empty and param.kind not in _VARIADIC
        if needed and index >= positional and name not in given and name not in supplied:
            raise ConfigError(f"{key}.{name} is missing: {shown} requires it; add {key}.{name}=<value>")


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _nested(node: dict, key: str) -> Iterator[tuple[str, dict]]:
    """The `_target_` nodes one level inside a node (e.g. the transforms of an albumentations pipeline)."""
    for name, value in node.items():
        if isinstance(value, dict) and "_target_" in value:
            yield f"{key}.{name}", value
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict) and "_target_" in item:
                    yield f"{key}.{name}[{i}]", item


# The package's own targets under the names configs saved before their modules moved give them (0.1.0: before
# the folders; 0.2.0: before training/'s rooms): checkpoints and records are read back under the current names
# (tests/fixtures/old_runs), and a config a person writes with an old name is told the new one (`locate`).
_ROOMS_0_3 = {"schedule": "engine", "tracking": "recording", "callbacks": "recording"}
MOVED = {
    "resnet9.model.ResNet9": "resnet9.models.resnet9.ResNet9",
    "resnet9.augment.Augmentation": "resnet9.data.augment.Augmentation",
    "resnet9.augment.Pipeline": "resnet9.data.augment.Pipeline",
    "resnet9.data.cifar10": "resnet9.data.datasets.cifar10",
    "resnet9.data.cifar100": "resnet9.data.datasets.cifar100",
    "resnet9.schedule.one_cycle": "resnet9.training.engine.schedule.one_cycle",
    "resnet9.schedule.piecewise_linear": "resnet9.training.engine.schedule.piecewise_linear",
    "resnet9.schedule.warmup_cosine": "resnet9.training.engine.schedule.warmup_cosine",
    "resnet9.tracking.WandbTracker": "resnet9.training.recording.tracking.WandbTracker",
    "resnet9.tracking.NullTracker": "resnet9.training.recording.tracking.NullTracker",
    "resnet9.callbacks.WeightNorm": "resnet9.training.recording.callbacks.WeightNorm",
} | {
    f"resnet9.training.{module}.{name}": f"resnet9.training.{room}.{module}.{name}"
    for module, room in _ROOMS_0_3.items()
    for name in {
        "schedule": ("one_cycle", "piecewise_linear", "warmup_cosine"),
        "tracking": ("WandbTracker", "NullTracker"),
        "callbacks": ("WeightNorm", "EarlyStopping", "BestCheckpoint"),
    }[module]
}


def current_names(node: Any) -> Any:
    """A plain config read from a file, with the package's moved targets under their current names."""
    if isinstance(node, dict):
        return {k: MOVED.get(v, v) if k == "_target_" and isinstance(v, str) else current_names(v)
                for k, v in node.items()}  # fmt: skip
    if isinstance(node, list):
        return [current_names(item) for item in node]
    return node


def named_targets(node: Any) -> Iterator[tuple[str, Any]]:
    """(key, target) for every `_target_` anywhere in a plain config (dicts and lists)."""
    stack: list[tuple[str, Any]] = [("", node)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            if "_target_" in value:
                yield key.lstrip(".") or "<top>", value["_target_"]
            stack += [(f"{key}.{k}", v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(f"{key}[{i}]", v) for i, v in enumerate(value)]


def permitted(config_dirs: Iterable[str | Path] = ()) -> set[str]:
    """Every `_target_` named by a YAML file in the package's conf/ or in the given config folders."""
    found: set[str] = set()
    for folder in (PACKAGE_CONF, *map(Path, config_dirs)):
        for path in sorted(Path(folder).expanduser().rglob("*.yaml")):
            try:
                loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            except Exception:  # a YAML Hydra would refuse too; it names nothing we build
                continue
            found.update(t for _, t in named_targets(loaded) if isinstance(t, str))
    return found


def check_permitted(config: Any, allowed: set[str], how: str) -> None:
    """A config from disk: every `_target_` in it is one the package or the user's config folder names."""
    for key, target in named_targets(config):
        if not isinstance(target, str) or target not in allowed:
            shown = target if isinstance(target, str) and len(target) < 80 else type(target).__name__
            raise ConfigError(
                f"{key}._target_={shown} is named neither by resnet9 nor by your config folder, so it is not "
                f"built from a file; {how}"
            )
