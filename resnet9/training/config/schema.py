"""Typed configs: every setting of conf/ with its type and range, declared beside it (pydantic).

Hydra composes the config and rejects unknown groups, options and keys itself; `validate` then checks the
composed config against these classes, before any work starts. A bad value ends the command in one line
that names the key, what it must be and a valid example:

    error: epochs must be greater than or equal to 1, got 0; e.g. epochs=24

One class per config group types the keys its options share, with their ranges; an option names any
importable `_target_` (`Option`), whose other keys targets.py checks against its signature. The few rules that
tie fields together (the peak inside the run, LRMIN below LRMAX, the global batch split over the processes) are in
one place, `TrainConfig.rules_across_fields`. Defaults live in the YAML alone, and so does the example a message
offers (`package_default`); a field names `examples` only where its default is none (null, auto, a `${...}`).
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Annotated, Any, Literal, get_args, get_origin

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError, PydanticUndefined

from resnet9.core.errors import ConfigError, first_line
from resnet9.data.datasets import TEST_SIZE
from resnet9.training.config import targets

AUTO = "auto"


def _rule(expected: str, holds: Any) -> PlainValidator:
    """A value check with its own wording: `holds(value)` or "<key> must be <expected>"."""

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not holds(value):
            raise PydanticCustomError("rule", "Input should be " + expected)
        return value

    return PlainValidator(check)


def _is_positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


# The LRs: a number, or "auto" for the range test's value.
PositiveOrAuto = Annotated[float | str, _rule("a number > 0 or 'auto'", lambda v: v == AUTO or _is_positive_number(v))]
Device = Annotated[
    str, _rule("auto, cpu or cuda[:N]", lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v))
]
Fraction = Annotated[float, Field(ge=0, lt=1)]
# Per-channel normalisation (0..1 scale): 3 values for RGB images, 1 for grey (DataConfig checks which).
Channels = Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=1, max_length=3)]
PositiveChannels = Annotated[list[Annotated[float, Field(gt=0, le=1)]], Field(min_length=1, max_length=3)]


def _is_side(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 8


# Pixels per side, or [height, width]: at least the 8 that ResNet9's three 2x poolings need (datasets.py).
ImageSize = Annotated[
    int | list[int],
    _rule("a side >= 8 or [height,width], each >= 8", lambda v: _is_side(v) or (
        isinstance(v, list) and len(v) == 2 and all(map(_is_side, v)))),
]  # fmt: skip
# A seed every random source takes as it is (NumPy's and albumentations' refuse negatives and >= 2**32).
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class Section(BaseModel):
    # strict: a string is never quietly read as a number, nor a bool as an integer; no inf/nan; frozen: read-only.
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


class Option(Section):
    """One option of a config group: any importable `_target_` (targets.py imports it and checks every other
    key against its signature before any work). Only keys that several options share are typed here, with
    their ranges, as optional fields; a default lives in the option's YAML alone."""

    model_config = ConfigDict(extra="allow")
    target: str = Field(alias="_target_")


FREE = {"free_on_resume": True}  # may differ between a run and its resumption: changes no number it computes
READS_CURVE = {"reads_curve": True}  # how the range test's curve is read, not what shapes it (cache key)


class ModelConfig(Option):
    num_classes: int | None = Field(None, ge=2, examples=[10])  # ${data.num_classes} in the package's models
    # ResNet9's channel scale. Parameters grow as width²: 8 is 420M of them (1.7 GB in fp32); a larger width,
    # often a typo, would fail later in allocation with the tensor's size in bytes
    width: float | None = Field(None, gt=0, le=8)
    logit_scale: float | None = Field(None, gt=0)
    in_channels: int | None = Field(None, ge=1, examples=[3])  # ${data.channels} in the package's models


class AugmentConfig(Option):
    # pixels, at any image size; what fits the images is checked once they are read (augment.check_fits)
    pad: int | None = Field(None, ge=0, le=256)
    flip: bool | None = None
    cutout: int | None = Field(None, ge=0, le=1024)
    engine: Literal["auto", "device", "albumentations"] | None = None
    whole_epoch: Literal["auto", True, False] | None = Field(None, json_schema_extra=FREE)


class OptimizerConfig(Option):
    """`_partial_`: the trainer adds the parameters and the LR (targets.SUPPLIED)."""

    partial: Literal[True] = Field(alias="_partial_")
    lr: PositiveOrAuto = Field(examples=[0.4])  # the peak, LRMAX
    weight_decay: float | None = Field(None, ge=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    nesterov: bool | None = None
    betas: Annotated[list[Fraction], Field(min_length=2, max_length=2)] | None = Field(None, examples=["[0.9,0.999]"])
    fused: bool | None = None


class SchedulerConfig(Option):
    """`_partial_`: the trainer adds those of optimizer, lr_min, lr_max, epochs, steps_per_epoch that its callable
    takes (targets.SUPPLIED); `lr_min`, `interval` and `monitor` it reads itself (schedule.py)."""

    partial: Literal[True] = Field(alias="_partial_")
    lr_min: PositiveOrAuto | None = Field(None, examples=[0.04])
    interval: Literal["step", "epoch"] | None = None
    monitor: str | None = None
    peak_epoch: Annotated[float, Field(gt=0)] | Literal["auto"] | None = Field(None, examples=[5])
    cycle_momentum: bool | None = None


class LoggerConfig(Option):
    partial: Literal[True] = Field(alias="_partial_")
    group: str | None = None
    tags: list[str] | None = None
    mode: Literal["offline", "online", "disabled"] | None = None
    system_metrics: Literal["auto", True, False] | None = None


class WandbConfig(Section):
    """A W&B logger section read back from a job's metrics.json (untrusted): only the project's own tracker."""

    target: Literal["resnet9.training.recording.tracking.WandbTracker"] = Field(alias="_target_")
    partial: Literal[True] = Field(alias="_partial_")
    project: str
    entity: str | None
    mode: Literal["offline", "online", "disabled"]
    group: str | None
    tags: list[str]
    log_checkpoint: bool = False  # absent from metrics.json written before it existed
    system_metrics: Literal["auto", True, False] = AUTO  # the same


class NoLoggerConfig(Section):
    target: Literal["resnet9.training.recording.tracking.NullTracker"] = Field(alias="_target_")
    partial: Literal[True] = Field(alias="_partial_")


class DataConfig(Option):
    root: str = Field(json_schema_extra=FREE)
    download: bool
    limit_train: int | None = Field(ge=10, examples=[1000])
    limit_test: int | None = Field(ge=10, examples=[1000])
    # read by the trainer, not passed to the data set's function (targets.CONSUMED)
    num_workers: int = Field(ge=0)  # free on resume for the device engine only (state._comparable)
    num_classes: int = Field(ge=2)
    # the images' shape, checked as they load (build.dataset)
    channels: Literal[1, 3]
    image_size: ImageSize
    mean: Channels
    std: PositiveChannels

    @model_validator(mode="after")
    def one_mean_and_std_per_channel(self) -> DataConfig:
        channels = self.channels
        if not len(self.mean) == len(self.std) == channels:
            example = "[0.5]" if channels == 1 else "[0.5,0.5,0.5]"
            raise ConfigError(
                f"data.mean and data.std must give one value per channel ({channels}: data.channels={channels}), got "
                f"{len(self.mean)} and {len(self.std)}; e.g. data.mean={example}"
            )
        return self


class Normalization(Section):
    """A data section's mean/std as read back from a checkpoint (untrusted): the same ranges, nothing else."""

    model_config = ConfigDict(extra="ignore")
    mean: Channels
    std: PositiveChannels


def saved_normalization(values: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of a saved data section, or None where it has none that passes the ranges."""
    try:
        checked = Normalization.model_validate(values)
    except ValidationError:
        return None
    return tuple(checked.mean), tuple(checked.std)


class LRFinderConfig(Section):
    start_lr: float = Field(gt=0)
    end_lr: float = Field(gt=0)
    num_iter: int = Field(ge=1)
    smooth_f: float = Field(ge=0, lt=1)
    diverge_th: float = Field(gt=1)
    skip_start: int = Field(ge=0, json_schema_extra=READS_CURVE)
    skip_end: int = Field(ge=0, json_schema_extra=READS_CURVE)
    rule: Literal["steepest", "lowest", "fall_end", "tenth"] = Field(json_schema_extra=READS_CURVE)
    max_divisor: float = Field(ge=1, json_schema_extra=READS_CURVE)
    min_drop: float = Field(gt=0, lt=1, json_schema_extra=READS_CURVE)
    seed: Seed
    scale: float = Field(gt=0, json_schema_extra=READS_CURVE)
    max_scale: float = Field(gt=0, json_schema_extra=READS_CURVE)
    min_scale: float = Field(gt=0, json_schema_extra=READS_CURVE)
    cache: bool = Field(json_schema_extra=READS_CURVE)
    cache_dir: str = Field(json_schema_extra=READS_CURVE)


class EMAConfig(Section):
    decay: float = Field(ge=0, lt=1, examples=[0.99])
    start_epoch: int = Field(ge=1)


GROUPS = ("model", "augment", "optimizer", "scheduler", "logger", "data", "callbacks")


class TrainConfig(Section):
    """conf/config.yaml: what `python -m resnet9.train` (and lr_find, summary) run with. Defaults: the YAML.

    A top-level key that needs no more than its default's type (a switch, a name) has no field here: it is
    checked against the type of its default in config.yaml (`_typed_by_their_defaults`), so such a key is written
    in the YAML and where it is used, nowhere else. A key with a range or a set of choices has a field."""

    model_config = ConfigDict(extra="allow")

    model: ModelConfig
    augment: AugmentConfig
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    logger: LoggerConfig = Field(json_schema_extra=FREE)
    data: DataConfig
    callbacks: dict[str, Option] | None = None  # absent: none
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    eval_batch_size: int = Field(ge=1)
    seed: Seed
    device: Device = Field(json_schema_extra=FREE)
    progress: bool = Field(json_schema_extra=FREE)
    log_every: int = Field(ge=1, json_schema_extra=FREE)
    resume: Literal["auto", True, False] = Field(json_schema_extra=FREE)
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    # the eager step's arithmetic, but for its LR rounded to float32 (on a CPU: the eager step)
    cuda_graph: bool = Field(json_schema_extra=FREE)
    warmup: Literal["auto", True, False] = Field(json_schema_extra=FREE)
    label_smoothing: Fraction = Field(examples=[0.2])
    ema: EMAConfig
    lr_finder: LRFinderConfig

    @model_validator(mode="before")
    @classmethod
    def _typed_by_their_defaults(cls, values: Any) -> Any:
        """Keys without a field: each must be a key of config.yaml, of its default's type (an int does for a float)."""
        declared = {field.alias or name for name, field in cls.model_fields.items()} | set(cls.model_fields)
        for key, value in values.items() if isinstance(values, dict) else ():
            if key in declared:
                continue
            default = package_default((key,))
            if default is None:
                raise ConfigError(f"{key} is not a setting here (got {value!r}); remove it or check its spelling")
            kinds = (int, float) if type(default) is float else (type(default),)
            if type(value) not in kinds:
                name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[type(default)]
                shown = json.dumps(default) if not isinstance(default, str) else default
                raise ConfigError(f"{key} must be {name}, got {value!r}; e.g. {key}={shown}")
        return values

    @model_validator(mode="after")
    def model_takes_the_datas_channels(self) -> TrainConfig:
        """A model given other input channels than the images have would fail at its first convolution."""
        given, channels = self.model.in_channels, self.data.channels
        if given is not None and given != channels:
            raise ConfigError(
                f"model.in_channels={given} but the data set's images have {channels} channel(s) (data.channels); "
                f"e.g. model.in_channels={channels}, or follow the data: model.in_channels=${{data.channels}}"
            )
        return self

    @model_validator(mode="after")
    def rules_across_fields(self, info: ValidationInfo) -> TrainConfig:
        """The rules that tie settings together. `processes`: torchrun's processes (validation context)."""
        processes = (info.context or {}).get("processes", 1)
        peak, finder = self.scheduler.peak_epoch, self.lr_finder
        if peak not in (AUTO, None) and not peak < self.epochs:
            raise ConfigError(
                f"scheduler.peak_epoch must lie inside the run (0 < peak_epoch < epochs={self.epochs}), "
                f"got {peak!r}; e.g. scheduler.peak_epoch={self.epochs * 5 / 24:.3g} (the mission's 5 of 24 epochs)"
            )
        if self.optimizer.nesterov and self.optimizer.momentum == 0:
            raise ConfigError(
                "optimizer.nesterov=true needs momentum, got optimizer.momentum=0; "
                "e.g. optimizer.momentum=0.9, or optimizer.nesterov=false for plain SGD"
            )
        lr, lr_min = self.optimizer.lr, self.scheduler.lr_min
        if AUTO not in (lr, lr_min) and lr_min is not None and lr_min >= lr:
            raise ConfigError(
                f"scheduler.lr_min={lr_min} must be below the peak optimizer.lr={lr}; lower lr_min or raise lr"
            )
        if self.batch_size % processes:
            fitting = max(self.batch_size // processes, 1) * processes
            raise ConfigError(
                f"batch_size={self.batch_size} (the global batch) does not split evenly over {processes} torchrun "
                f"processes; use a multiple of {processes}, e.g. batch_size={fitting}"
            )
        train_size = self.data.limit_train  # (the whole set's size is known once it is read: train.py)
        if train_size is not None and self.batch_size > train_size:
            raise ConfigError(
                f"batch_size={self.batch_size} is larger than the {train_size} training images, so an epoch would "
                f"have no full batch; lower batch_size or raise data.limit_train"
            )
        if self.ema.decay > 0 and self.ema.start_epoch > self.epochs:
            raise ConfigError(
                f"ema.start_epoch must be in 1..epochs={self.epochs}, got {self.ema.start_epoch}; "
                f"e.g. ema.start_epoch={max(1, self.epochs - 4)}"
            )
        if finder.end_lr <= finder.start_lr:
            raise ConfigError(
                f"lr_finder.end_lr must be above lr_finder.start_lr, got {finder.end_lr}; e.g. lr_finder.end_lr=10"
            )
        if finder.num_iter < (fewest := finder.skip_start + finder.skip_end + 10):
            raise ConfigError(
                f"lr_finder.num_iter must be an integer >= {fewest} (skip_start + skip_end + 10), "
                f"got {finder.num_iter}; e.g. lr_finder.num_iter=100"
            )
        return self


class EvaluateDataConfig(Section):
    root: str | None = None  # null: the run's own
    limit_test: int | None = Field(None, ge=10, le=TEST_SIZE, examples=[1000])
    download: bool = False


class EvaluateConfig(Section):
    """conf/evaluate.yaml: what `python -m resnet9.evaluate` runs with."""

    checkpoint: str = Field(examples=["outputs/<date>/<time>/last.pt"])
    device: Device = AUTO
    batch_size: int | None = Field(None, ge=1, examples=[1024])
    gallery_size: int = Field(36, ge=0)
    data: EvaluateDataConfig = EvaluateDataConfig()


def validate(cfg: DictConfig | dict, processes: int = 1) -> TrainConfig:
    """The config as a TrainConfig, its `_target_`s imported and their keys checked against their signatures;
    a ConfigError with one line naming the first bad key otherwise. For a config a person composed (trusted):
    one read from a file goes through `validate_saved` first."""
    plain = _plain(TrainConfig, cfg)
    checked = _validated(TrainConfig, plain, {"processes": processes})
    targets.check_callables(plain, GROUPS)
    return checked


def validate_saved(config: Any, allowed: set[str], fix: str) -> None:
    """A config from a file (a checkpoint's): every `_target_` in it is one of `allowed` (`targets.permitted`:
    those the package or the user's config folders name), before anything in it is imported; then validated
    as any config."""
    targets.check_permitted(config, allowed, fix)
    validate(config)


def validate_evaluate(cfg: DictConfig) -> EvaluateConfig:
    return _validated(EvaluateConfig, cfg, {})


def validate_model(values: Any, allowed: set[str], fix: str) -> ModelConfig:
    """A model section from a checkpoint's saved config: a target of `allowed` (`targets.permitted`; nothing
    else is imported), with keys its signature takes."""
    if not isinstance(values, dict):
        raise ConfigError(f"model must be a mapping of settings, got {type(values).__name__}; e.g. model.width=1.0")
    values = targets.current_names(values)
    targets.check_permitted({"model": values}, allowed, fix)
    checked = _validated(ModelConfig, values, {}, prefix="model.")
    targets.check_callables({"model": values}, ["model"])
    return checked


def validate_logger(values: Any) -> WandbConfig | NoLoggerConfig:
    """A logger section from elsewhere (a job's metrics.json): only the project's own trackers."""
    loggers = {
        "resnet9.training.recording.tracking.WandbTracker": WandbConfig,
        "resnet9.training.recording.tracking.NullTracker": NoLoggerConfig,
    }
    values = targets.current_names(values)
    target = values.get("_target_") if isinstance(values, dict) else None
    if target not in loggers:
        raise ConfigError(f"logger._target_ must be one of {', '.join(loggers)}, got {target!r}; e.g. logger=wandb")
    return _validated(loggers[target], values, {}, prefix="logger.")


def marked(schema: type[Section], mark: str, prefix: str = "") -> list[str]:
    """The dotted keys whose fields carry `mark` (FREE, READS_CURVE), so that no list of them is kept by hand."""
    found = []
    for name, field in schema.model_fields.items():
        key = prefix + (field.alias or name)
        if (field.json_schema_extra or {}).get(mark):
            found.append(key)
        found += [k for t in get_args(field.annotation) or (field.annotation,) if _is_section(t)
                  for k in marked(t, mark, key + ".")]  # fmt: skip
    return found


def _plain(schema: type[Section], cfg: DictConfig | dict, prefix: str = "") -> dict:
    """A composed config as plain values, resolved; a missing value or a ${...} that cannot be resolved is a
    ConfigError naming its key."""
    if not isinstance(cfg, DictConfig):
        return cfg
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"{missing[0]} is missing; e.g. {missing[0]}={_example(schema, (missing[0],))}")
        return OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:  # e.g. optimizer.lr=${oops}
        raise ConfigError(
            f"{prefix}{err.full_key} cannot be resolved ({first_line(err)}); give a value, or a ${{...}} "
            f"that names a key, e.g. eval_batch_size=${{batch_size}}"
        ) from None


def _validated(schema: type[Section], cfg: DictConfig | dict, context: dict, prefix: str = "") -> Any:
    cfg = _plain(schema, cfg, prefix)
    try:
        return schema.model_validate(cfg, context=context)
    except ValidationError as err:
        raise ConfigError(prefix + _one_line(err.errors()[0], schema, cfg, prefix)) from None


def _one_line(error: dict, schema: type[Section], given: dict, prefix: str = "") -> str:
    """pydantic's first error -> `<key> must be <what>, got <value>; e.g. <key>=<example>`."""
    keys = _config_keys(error["loc"], given)
    if error["type"] == "missing":  # the missing key itself is not in the config: name it after its section
        keys.append(str(error["loc"][-1]))
    key = ".".join(keys)
    if error["type"] == "extra_forbidden":
        return f"{key} is not a setting here (got {error['input']!r}); remove it or check its spelling"
    if error["type"] == "missing":
        return f"{key} is missing; e.g. {key}={_example(schema, error['loc'], prefix)}"
    example = f"{key.split('[')[0]}={_example(schema, error['loc'], prefix)}"
    if error["msg"].startswith("Input should be "):
        return f"{key} must be {error['msg'].removeprefix('Input should be ')}, got {error['input']!r}; e.g. {example}"
    return f"{key} is not valid ({error['msg'][0].lower()}{error['msg'][1:]}), got {error['input']!r}; e.g. {example}"


def _config_keys(loc: tuple, given: Any) -> list[str]:
    """The parts of pydantic's error location that are config keys (it also names the union member tried)."""
    keys = []
    for part in loc:
        if isinstance(given, dict) and part in given:
            keys.append(str(part))
            given = given[part]
        elif isinstance(given, list) and isinstance(part, int) and part < len(given):
            keys[-1] += f"[{part}]"
            given = given[part]
    return keys


def package_default(keys: tuple) -> Any:
    """The value conf/config.yaml (or the option its defaults list picks for a group) gives the key `keys`, as the
    YAML writes it (unresolved); None where it gives none. What a message offers as its example, so that the
    schema never restates a default."""
    node: Any = _package_defaults()
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


@functools.cache
def _package_defaults() -> dict[str, Any]:
    top = OmegaConf.to_container(OmegaConf.load(targets.PACKAGE_CONF / "config.yaml"), resolve=False)
    for entry in top.pop("defaults", []):
        group, option = next(iter(entry.items())) if isinstance(entry, dict) else (None, None)
        path = targets.PACKAGE_CONF / str(group) / f"{option}.yaml"
        if group and option and path.is_file():
            top[group] = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return top


def _usable_example(value: Any) -> bool:
    """A value a message can offer: not null, not an interpolation or a mandatory `???`."""
    return value is not None and not (isinstance(value, str) and ("${" in value or value == "???"))


def _example(schema: type[Section], loc: tuple, prefix: str = "") -> str:
    """The field at `loc` written as a Hydra override value: its `examples` where the schema gives one (for a key
    whose default is no example: null, auto, an interpolation), else the package's YAML default (a key of the
    training config, or of its section `prefix`), else the schema's default."""
    field = _field_at(schema, loc)
    keys = (*prefix.split(".")[:-1], *(part for part in loc if isinstance(part, str)))
    if (schema is TrainConfig or prefix) and not (field is not None and field.examples):
        default = package_default(keys)
        if _usable_example(default):
            return default if isinstance(default, str) else json.dumps(default, separators=(",", ":"))
    if field is None:
        return "..."
    value = field.examples[0] if field.examples else field.default
    if value is PydanticUndefined:  # no default: a Literal's value (e.g. a _target_), else nothing to offer
        value = get_args(field.annotation)[0] if get_origin(field.annotation) is Literal else "..."
    return value if isinstance(value, str) else json.dumps(value)


def _field_at(schema: type[Section], loc: tuple) -> Any:
    """The pydantic field at pydantic's error location `loc` (None when it names none)."""
    candidates, field = [schema], None
    for part in loc:  # (an index into a list names no field: the list's own field stays the one found)
        owners = [(c, name) for c in candidates for name, f in c.model_fields.items() if part in (name, f.alias)]
        if owners:
            field = owners[0][0].model_fields[owners[0][1]]
            candidates = [t for t in (field.annotation, *get_args(field.annotation)) if _is_section(t)]
    return field


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Section)
