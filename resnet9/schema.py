"""Typed configs: every setting of conf/ with its type and range, declared beside it (pydantic).

Hydra composes the config and rejects unknown groups, options and keys itself; `validate` then checks the
composed config against these classes, before any work starts. A bad value ends the command in one line
that names the key, what it must be and a valid example:

    error: epochs must be greater than or equal to 1, got 0; e.g. epochs=24

One class per config group mirrors `conf/<group>/*.yaml`; a group with several options of different shape
(optimizer, logger) is a union told apart by the option's `_target_`. A new option with the same fields needs
nothing here; one with new fields declares them in its own class. The few rules that tie fields together
(the peak inside the run, LRMIN below LRMAX, the global batch split over the processes) are in one place,
`TrainConfig.rules_across_fields`. The example in a message is the field's `examples`, else its default.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal, get_args, get_origin

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError, PydanticUndefined

from resnet9.data import TEST_SIZE, TRAIN_SIZE
from resnet9.errors import ConfigError

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
# A seed every random source takes as it is (NumPy's and albumentations' refuse negatives and >= 2**32).
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class Section(BaseModel):
    # strict: a string is never quietly read as a number, nor a bool as an integer; no inf/nan; frozen: read-only.
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


class ModelConfig(Section):
    target: Literal["resnet9.model.ResNet9"] = Field(alias="_target_")
    num_classes: Literal[10] = 10
    # scales every channel count; 1.0 = the mission's network. Parameters grow as width²: 8 is 420M of them (1.7 GB
    # in fp32); a larger width, often a typo, would fail later in allocation with the tensor's size in bytes
    width: float = Field(1.0, gt=0, le=8)
    logit_scale: float = Field(0.125, gt=0)


class AugmentConfig(Section):
    target: Literal["resnet9.augment.Augmentation"] = Field(alias="_target_")
    pad: int = Field(4, ge=0, le=16)
    flip: bool = True
    cutout: int = Field(8, ge=0, le=32)
    engine: Literal["auto", "device", "albumentations"] = AUTO
    whole_epoch: Literal["auto", True, False] = AUTO


class OptimizerConfig(Section):
    """What every optimizer option has; `_partial_`: the trainer adds the parameters and the LR."""

    partial: Literal[True] = Field(alias="_partial_")
    lr: PositiveOrAuto = Field(AUTO, examples=[0.4])  # the peak, LRMAX
    weight_decay: float = Field(0.0, ge=0)
    fused: bool | None = None


class SGDConfig(OptimizerConfig):
    target: Literal["torch.optim.SGD"] = Field(alias="_target_")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True


class AdamConfig(OptimizerConfig):
    target: Literal["torch.optim.Adam"] = Field(alias="_target_")
    betas: Annotated[list[Fraction], Field(min_length=2, max_length=2)] = Field([0.9, 0.999], examples=["[0.9,0.999]"])


class OneCycleConfig(Section):
    target: Literal["resnet9.schedule.one_cycle"] = Field(alias="_target_")
    partial: Literal[True] = Field(alias="_partial_")
    lr_min: PositiveOrAuto = Field(AUTO, examples=[0.04])
    peak_epoch: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(AUTO, examples=[5])
    cycle_momentum: bool = False


class WandbConfig(Section):
    target: Literal["resnet9.tracking.WandbTracker"] = Field(alias="_target_")
    partial: Literal[True] = Field(alias="_partial_")
    project: str = "resnet9"
    entity: str | None = None
    mode: Literal["offline", "online", "disabled"] = "offline"
    group: str | None = None
    tags: list[str] = []
    log_checkpoint: bool = False  # last.pt as a W&B artifact: a copy of the checkpoint per run (52.7 MB at width 1)
    system_metrics: Literal["auto", True, False] = AUTO  # W&B's CPU/GPU use charts; auto: on for CUDA runs


class NoLoggerConfig(Section):
    target: Literal["resnet9.tracking.NullTracker"] = Field(alias="_target_")
    partial: Literal[True] = Field(alias="_partial_")


class DataConfig(Section):
    root: str = "data"
    download: bool = True
    limit_train: int | None = Field(None, ge=10, le=TRAIN_SIZE, examples=[1000])
    limit_test: int | None = Field(None, ge=10, le=TEST_SIZE, examples=[1000])
    num_workers: int = Field(2, ge=0)


class LRFinderConfig(Section):
    start_lr: float = Field(1e-5, gt=0)
    end_lr: float = Field(10.0, gt=0)
    num_iter: int = Field(100, ge=1)
    smooth_f: float = Field(0.05, ge=0, lt=1)
    diverge_th: float = Field(5, gt=1)
    skip_start: int = Field(10, ge=0)
    skip_end: int = Field(5, ge=0)
    rule: Literal["steepest", "lowest", "fall_end", "tenth"] = "steepest"
    max_divisor: float = Field(1.0, ge=1)
    min_drop: float = Field(0.1, gt=0, lt=1)
    seed: Seed = 0
    scale: float = Field(1.0, gt=0)
    max_scale: float = Field(1.0, gt=0)
    min_scale: float = Field(1.0, gt=0)
    cache: bool = True
    cache_dir: str = "~/.cache/resnet9/lr_find"


class EMAConfig(Section):
    decay: float = Field(0.0, ge=0, lt=1, examples=[0.99])
    start_epoch: int = Field(20, ge=1)


Optimizer = Annotated[SGDConfig | AdamConfig, Field(discriminator="target")]
Logger = Annotated[WandbConfig | NoLoggerConfig, Field(discriminator="target")]


class TrainConfig(Section):
    """conf/config.yaml: what `python -m resnet9.train` (and lr_find, summary) run with."""

    model: ModelConfig
    augment: AugmentConfig
    optimizer: Optimizer
    scheduler: OneCycleConfig
    logger: Logger
    epochs: int = Field(24, ge=1)
    batch_size: int = Field(512, ge=1)
    eval_batch_size: int = Field(2000, ge=1)
    seed: Seed = 0
    device: Device = AUTO
    deterministic: bool = False
    channels_last: bool = True
    progress: bool = True
    log_every: int = Field(10, ge=1)
    checkpoint: bool = True
    resume: Literal["auto", True, False] = AUTO
    precision: Literal["auto", "fp32", "bf16", "fp16"] = AUTO
    compile: bool = False
    cuda_graph: bool = False
    warmup: Literal["auto", True, False] = AUTO
    label_smoothing: Fraction = Field(0.0, examples=[0.2])
    eval_tta: bool = False
    ema: EMAConfig = EMAConfig()
    data: DataConfig = DataConfig()
    lr_finder: LRFinderConfig = LRFinderConfig()

    @model_validator(mode="after")
    def rules_across_fields(self, info: ValidationInfo) -> TrainConfig:
        """The rules that tie settings together. `processes`: torchrun's processes (validation context)."""
        processes = (info.context or {}).get("processes", 1)
        peak, finder = self.scheduler.peak_epoch, self.lr_finder
        if peak != AUTO and not peak < self.epochs:
            raise ConfigError(
                f"scheduler.peak_epoch must lie inside the run (0 < peak_epoch < epochs={self.epochs}), "
                f"got {peak!r}; e.g. scheduler.peak_epoch={self.epochs * 5 / 24:.3g} (the mission's 5 of 24 epochs)"
            )
        if isinstance(self.optimizer, SGDConfig) and self.optimizer.nesterov and self.optimizer.momentum == 0:
            raise ConfigError(
                "optimizer.nesterov=true needs momentum, got optimizer.momentum=0; "
                "e.g. optimizer.momentum=0.9, or optimizer.nesterov=false for plain SGD"
            )
        lr, lr_min = self.optimizer.lr, self.scheduler.lr_min
        if AUTO not in (lr, lr_min) and lr_min >= lr:
            raise ConfigError(
                f"scheduler.lr_min={lr_min} must be below the peak optimizer.lr={lr}; lower lr_min or raise lr"
            )
        if self.batch_size % processes:
            fitting = max(self.batch_size // processes, 1) * processes
            raise ConfigError(
                f"batch_size={self.batch_size} (the global batch) does not split evenly over {processes} torchrun "
                f"processes; use a multiple of {processes}, e.g. batch_size={fitting}"
            )
        train_size = self.data.limit_train or TRAIN_SIZE
        if self.batch_size > train_size:
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
    """The config as a TrainConfig; a ConfigError with one line naming the first bad key otherwise."""
    return _validated(TrainConfig, cfg, {"processes": processes})


def validate_evaluate(cfg: DictConfig) -> EvaluateConfig:
    return _validated(EvaluateConfig, cfg, {})


def validate_model(values: Any) -> ModelConfig:
    """A model section from elsewhere (a checkpoint's saved config): only the project's own network, plain values."""
    if not isinstance(values, dict):
        raise ConfigError(f"model must be a mapping of settings, got {type(values).__name__}; e.g. model.width=1.0")
    return _validated(ModelConfig, values, {}, prefix="model.")


def validate_logger(values: Any) -> WandbConfig | NoLoggerConfig:
    """A logger section from elsewhere (a job's metrics.json): only the project's own trackers."""
    loggers = {"resnet9.tracking.WandbTracker": WandbConfig, "resnet9.tracking.NullTracker": NoLoggerConfig}
    target = values.get("_target_") if isinstance(values, dict) else None
    if target not in loggers:
        raise ConfigError(f"logger._target_ must be one of {', '.join(loggers)}, got {target!r}; e.g. logger=wandb")
    return _validated(loggers[target], values, {}, prefix="logger.")


def _validated(schema: type[Section], cfg: DictConfig | dict, context: dict, prefix: str = "") -> Any:
    if isinstance(cfg, DictConfig):
        try:
            missing = sorted(OmegaConf.missing_keys(cfg))
            if missing:
                raise ConfigError(f"{missing[0]} is missing; e.g. {missing[0]}={_example(schema, (missing[0],))}")
            cfg = OmegaConf.to_container(cfg, resolve=True)
        except InterpolationResolutionError as err:  # e.g. optimizer.lr=${oops}
            raise ConfigError(
                f"{prefix}{err.full_key} cannot be resolved ({str(err).splitlines()[0]}); give a value, or a ${{...}} "
                f"that names a key, e.g. eval_batch_size=${{batch_size}}"
            ) from None
    try:
        return schema.model_validate(cfg, context=context)
    except ValidationError as err:
        raise ConfigError(prefix + _one_line(err.errors()[0], schema, cfg)) from None


def _one_line(error: dict, schema: type[Section], given: dict) -> str:
    """pydantic's first error -> `<key> must be <what>, got <value>; e.g. <key>=<example>`."""
    key = ".".join(_config_keys(error["loc"], given))
    if error["type"] == "union_tag_invalid":  # an option of a group whose _target_ has no schema
        expected = error["ctx"]["expected_tags"]
        return f"{key}._target_ must be one of {expected}, got {error['ctx']['tag']!r}; e.g. choose an option of {key}"
    if error["type"] == "extra_forbidden":
        return f"{key} is not a setting here (got {error['input']!r}); remove it or check its spelling"
    if error["type"] == "missing":
        return f"{key} is missing; e.g. {key}={_example(schema, error['loc'])}"
    example = f"{key.split('[')[0]}={_example(schema, error['loc'])}"
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


def _example(schema: type[Section], loc: tuple) -> str:
    """The `examples` (else the default) of the field at `loc`, written as a Hydra override value."""
    candidates, field = [schema], None
    for part in loc:
        owners = [(c, name) for c in candidates for name, f in c.model_fields.items() if part in (name, f.alias)]
        if owners:
            field = owners[0][0].model_fields[owners[0][1]]
            candidates = [t for t in (field.annotation, *get_args(field.annotation)) if _is_section(t)]
        else:  # the union member pydantic tried, named by its _target_
            candidates = [c for c in candidates if part in get_args(c.model_fields["target"].annotation)] or candidates
    if field is None:
        return "..."
    value = field.examples[0] if field.examples else field.default
    if value is PydanticUndefined:  # no default: a Literal's value (e.g. a _target_), else nothing to offer
        value = get_args(field.annotation)[0] if get_origin(field.annotation) is Literal else "..."
    return value if isinstance(value, str) else json.dumps(value)


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Section)
