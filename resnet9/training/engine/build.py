"""Config -> the pieces of a run: device and precision, data, model, loaders, optimizer, schedule, range-test probe.

Setup is written once, here; training, the range test, evaluation and the benchmark all build through it.
The config is validated first (schema.py, targets.py): each `_target_` that Hydra instantiates here was
imported and its keys checked, and one read from a file is one that the package or the user's config names.
What each group's callable receives from the trainer is `targets.SUPPLIED`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import random
import re
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from resnet9.core import jobcache
from resnet9.core.errors import ConfigError, UsageError, first_line
from resnet9.data import datasets
from resnet9.data.augment import Stats
from resnet9.training.config import schema, targets
from resnet9.training.engine import state
from resnet9.training.engine.cuda_graph import start_momentum
from resnet9.training.engine.distributed import World
from resnet9.training.engine.loop import Batches, StepSettings
from resnet9.training.engine.schedule import Stepped


def built(node: DictConfig | dict, key: str | None = None, **kwargs: object) -> object:
    """Hydra's `instantiate`, except that our own one-line errors raised while building (a data set not found,
    a setting out of range) come through as they are, not wrapped in Hydra's InstantiationException; and that a
    key a factory taking **kwargs passed on to a callable that refused it is one line naming the config's `key`
    (the signature check before any work cannot see through **kwargs: torchvision's and timm's factories)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UsageError):
            raise err.__cause__ from None
        refused = _refused_keyword(err.__cause__, node)
        if key is not None and refused is not None:
            raise ConfigError(
                f"{key}.{refused} is not an argument of {node['_target_']} (nor of what it passes its keys on to); "
                f"remove it or check the spelling"
            ) from None
        raise


def _refused_keyword(cause: BaseException | None, node: DictConfig | dict) -> str | None:
    """The config key a TypeError says was unexpected, where the config gave it (not a bug deeper down)."""
    found = re.search(r"unexpected keyword argument '(\w+)'", str(cause)) if isinstance(cause, TypeError) else None
    return found.group(1) if found and found.group(1) in node else None


def device(name: str, world: World | None = None) -> torch.device:
    """'auto' -> cuda if torch can use a GPU here, else cpu (with a warning where a GPU is there but torch cannot
    use it). An unavailable or unusable device is a ConfigError.

    Under torchrun every process takes the GPU of its local rank: device=auto or cuda gives cuda:LOCAL_RANK.
    """
    rank_gpu = world.local_rank if world is not None and world.is_parallel else 0  # the GPU this process would use
    if name == "auto":
        problem = cuda_problem(rank_gpu)
        if problem is not None:
            logging.getLogger(__name__).warning(
                "device=auto: this machine has a GPU but torch cannot use it (%s); training on the CPU. To use the "
                "GPU, %s",
                *problem,
            )
        name = "cuda" if problem is None and _cuda_available() else "cpu"
    try:
        chosen = torch.device(name)
    except (RuntimeError, TypeError):
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}; e.g. device=auto")
    if chosen.type == "cuda":
        problem = cuda_problem(rank_gpu if chosen.index is None else chosen.index)
        if problem is not None:
            raise ConfigError(f"device={name} but torch cannot use this GPU ({problem[0]}); {problem[1]}")
        if not _cuda_available():
            raise ConfigError(f"device={name} but no CUDA GPU is visible to torch; use device=cpu or device=auto")
    if chosen.type == "cuda" and world is not None and world.is_parallel:
        if chosen.index is not None:
            raise ConfigError(f"device={name} under torchrun: each process uses cuda:LOCAL_RANK; use device=cuda")
        chosen = torch.device("cuda", world.local_rank)
    if chosen.index is not None:  # cuda:N: make it the current device, as libraries expect
        torch.cuda.set_device(chosen)
    return chosen


# torch's "CUDA initialization: ..." warnings: torch looks for GPUs once per process and says what went wrong
# (a driver too old for its CUDA, say) only then, so they are kept for every later question
_CUDA_INIT_WARNINGS: list[str] = []


def _cuda_available() -> bool:
    """torch.cuda.is_available(), keeping what torch warned while it looked (other warnings pass on)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    for warning in caught:
        text = str(warning.message)
        if not text.startswith("CUDA initialization"):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        elif text not in _CUDA_INIT_WARNINGS:
            _CUDA_INIT_WARNINGS.append(text)
    return available


def cuda_problem(index: int = 0) -> tuple[str, str] | None:
    """(why torch cannot train on this machine's GPU `index`, how to fix it), or None where it can or no GPU is
    there. Two ways it cannot: a driver too old for the CUDA this torch was built with (torch then sees no GPU
    and warns), and a card this torch has no kernels for (it sees the GPU, and fails at the first kernel)."""
    if not _cuda_available():
        if not _CUDA_INIT_WARNINGS:
            return None  # no GPU, or no driver at all: nothing to warn about
        said = _CUDA_INIT_WARNINGS[0].removeprefix("CUDA initialization:").strip().split(". ")[0].rstrip(".")
        return (
            f"{said}; this torch {torch.__version__} is built for CUDA {torch.version.cuda}",
            f"update the NVIDIA driver to one for CUDA {torch.version.cuda} or newer (nvidia-smi names the CUDA a "
            "driver supports), or install a torch built for an older CUDA (README: GPUs)",
        )
    if index >= torch.cuda.device_count():
        return f"torch sees {torch.cuda.device_count()} GPU(s), there is no cuda:{index}", "name one it sees"
    capability, arch_list = torch.cuda.get_device_capability(index), torch.cuda.get_arch_list()
    if arch_list and not has_kernels(capability, arch_list):
        return (
            f"this torch {torch.__version__} has no kernels for the {torch.cuda.get_device_name(index)}: it is "
            f"sm_{capability[0]}{capability[1]}, torch has {' '.join(arch_list)}",
            "install a torch built for it (README: GPUs; e.g. the CUDA 12.6 build for sm_50 to sm_70: pip install "
            "torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu126)",
        )
    return None


def has_kernels(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a build for `arch_list` (torch.cuda.get_arch_list()) runs on a card of compute `capability`: its
    machine code for sm_XY runs on X.Y and later minor versions of X (an "a"/"f" variant on X.Y alone here, to
    be safe); its PTX for compute_XY is compiled for any card from X.Y on."""
    for arch in arch_list:
        found = re.fullmatch(r"(sm|compute)_(\d+)(\d)([a-z]?)", arch)
        if found is None:
            continue
        kind, built, variant = found.group(1), (int(found.group(2)), int(found.group(3))), found.group(4)
        same_family = capability[0] == built[0] and capability[1] >= built[1] and not variant
        if (kind == "compute" and capability >= built) or (kind == "sm" and (capability == built or same_family)):
            return True
    return False


def autocast_dtype(precision: str, on: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on a device: bf16, fp16, or None for plain fp32.

    auto = what the card does fast: bf16 on CUDA cards with native bf16 (compute capability >= 8.0: A100, H100,
    RTX 30xx and later), fp16 below that (V100, T4), where bf16 is emulated; fp16 needs loss scaling
    (`loss_scaler`). BatchNorm keeps fp32 statistics under autocast either way. On a CPU auto is fp32: CPUs
    without native bf16 (like our 2-core Xeon) run the others slower.
    """
    if precision == "auto" and on.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(on) >= (8, 0) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def loss_scaler(dtype: torch.dtype | None, on: torch.device) -> torch.amp.GradScaler | None:
    """fp16's small range underflows small gradients to zero: a GradScaler scales the loss up and the gradients
    back down (skipping a step whose gradients overflowed). bf16 and fp32 need none."""
    return torch.amp.GradScaler(on.type) if dtype is torch.float16 else None


def precision_name(dtype: torch.dtype | None) -> str:
    """How metrics.json and the start line name the precision."""
    names = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + loss scaling"}
    return names.get(dtype, "fp32")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally insist on deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True  # autotuned kernels; the input shape never changes


def step_settings(cfg: DictConfig, on: torch.device) -> StepSettings:
    """How each batch is computed, from the run's channels_last, precision, label_smoothing and log_every."""
    return StepSettings(
        device=on,
        memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format,
        autocast_dtype=autocast_dtype(cfg.precision, on),
        label_smoothing=cfg.get("label_smoothing", 0.0),
        log_every=cfg.get("log_every", 10),
    )


def dataset(data_cfg: DictConfig) -> datasets.ImageData:
    """The data set of the `data` group's option (root relative to where the command was started), checked
    against the option's `num_classes`.

    Read once per process and shared by every job that asks for the same files and subsets (jobcache.py).
    """
    root = Path(to_absolute_path(data_cfg.root)).expanduser()
    options = OmegaConf.to_container(data_cfg, resolve=True)
    for key in targets.CONSUMED["data"]:
        options.pop(key, None)
    options["root"] = str(root)
    key = [options, _file_stamps(root)]
    loaded = jobcache.shared.get("data", key, lambda: datasets.checked(built(options, "data"), data_cfg._target_))
    if len(loaded.classes) != data_cfg.num_classes:
        raise ConfigError(
            f"data.num_classes={data_cfg.num_classes} but {data_cfg._target_} gave {len(loaded.classes)} classes; "
            f"set data.num_classes={len(loaded.classes)}"
        )
    _check_shape(data_cfg, loaded.image_shape)
    return loaded


def stated_shape(data_cfg: DictConfig | dict) -> tuple[int, int, int]:
    """(height, width, channels) as the data option states them: `image_size` (a side, or [height, width]) and
    `channels`."""
    size = data_cfg["image_size"]
    height, width = tuple(size) if isinstance(size, Sequence) else (size, size)
    return height, width, data_cfg["channels"]


def _check_shape(data_cfg: DictConfig, image_shape: tuple[int, int, int]) -> None:
    """The option's stated shape against the images its function gave: the model is built for the former."""
    height, width, channels = image_shape
    stated = stated_shape(data_cfg)
    if stated[2] != channels:
        raise ConfigError(
            f"data.channels={stated[2]} but {data_cfg._target_} gave images of {channels} channel(s); set "
            f"data.channels={channels}"
        )
    if stated[:2] != (height, width):
        raise ConfigError(
            f"data.image_size={_as_value(stated[:2])} but {data_cfg._target_} gave {height}x{width} images; set "
            f"data.image_size={_as_value((height, width))}"
        )


def _as_value(size: tuple[int, int]) -> str:
    """A (height, width) as data.image_size writes it: one number for a square."""
    return str(size[0]) if size[0] == size[1] else f"[{size[0]},{size[1]}]"


def normalization(data_cfg: DictConfig | dict) -> Stats:
    """The data set's per-channel (mean, std), as its option states them."""
    return tuple(data_cfg["mean"]), tuple(data_cfg["std"])


def _file_stamps(root: Path) -> list[tuple[str, int, int]]:
    """Name, size and modification time of the files under root's data folders: changed files are never served
    from the cache."""
    stamps = []
    with contextlib.suppress(OSError):
        for path in sorted(p for p in root.glob("*/*") if p.is_file()):
            stat = path.stat()
            stamps.append((str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns))
    return stamps


def model(model_cfg: DictConfig | dict, settings: StepSettings, reuse: bool = False) -> nn.Module:
    """The network of the `model` section, on the device in the run's memory layout (random init: seed first).

    `reuse=True` (with compile=true): the network built for an earlier job of the same settings in this
    process, with the weights and BatchNorm statistics of a new one copied in place, so that its compiled form
    (`compiled`) serves this job too. The new one is drawn on the CPU, as every new network is before it moves:
    drawing in place on a GPU (`reset_parameters`) would use the GPU's generator, other numbers for the same seed.
    """
    if isinstance(model_cfg, DictConfig):  # resolved where it sits: model.num_classes is ${data.num_classes}
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True)

    def make() -> nn.Module:
        return built(OmegaConf.create(model_cfg), "model").to(settings.device, memory_format=settings.memory_format)

    if not reuse:
        return make()
    key = [OmegaConf.to_container(OmegaConf.create(model_cfg)), str(settings.device), str(settings.memory_format)]
    if not jobcache.shared.holds("model", key):
        return jobcache.shared.get("model", key, make)
    network = jobcache.shared.get("model", key, make)
    network.load_state_dict(instantiate(OmegaConf.create(model_cfg)).state_dict())  # copies into the same tensors
    return network


def compiled(module: nn.Module) -> nn.Module:
    """`torch.compile(module)`, compiled once per module object in this process (see `model(reuse=True)`)."""
    return jobcache.shared.get("compiled", id(module), lambda: torch.compile(module))


def train_loader(
    cfg: DictConfig, data_set: datasets.ImageData, settings: StepSettings, seed: int, world: World | None = None
) -> Batches:
    """Augmented training batches of `batch_size` (this rank's slice under torchrun), drawn with `seed`."""
    world = world or World()
    return built(cfg.augment, "augment").train_loader(
        data_set.train_images,
        data_set.train_labels,
        cfg.batch_size,
        settings.device,
        seed,
        num_workers=cfg.data.num_workers,
        memory_format=settings.memory_format,
        rank=world.rank,
        world_size=world.size,
        copies=data_set.device_copies,
        stats=normalization(cfg.data),
    )


def test_loader(cfg: DictConfig, data_set: datasets.ImageData, settings: StepSettings) -> Batches:
    """The test images in order, normalised only, in batches of `eval_batch_size`."""
    return built(cfg.augment, "augment").test_loader(
        data_set.test_images,
        data_set.test_labels,
        cfg.eval_batch_size,
        settings.device,
        num_workers=cfg.data.num_workers,
        memory_format=settings.memory_format,
        copies=data_set.device_copies,
        stats=normalization(cfg.data),
    )


def fused_kernels(optimizer_cfg: DictConfig, on: torch.device, loss_scaling: bool = False) -> dict[str, bool]:
    """On CUDA, torch's fused SGD/Adam kernels (one launch for all parameters) unless the config says otherwise;
    not for an SGD with dampening under loss scaling, whose first step zero momentum cannot stand in for
    (`ready_for_loss_scaling`)."""
    if loss_scaling and optimizer_cfg.get("dampening", 0) and optimizer_cfg.get("momentum", 0):
        return {}
    return {"fused": True} if on.type == "cuda" and optimizer_cfg.get("fused", "absent") is None else {}


def ready_for_loss_scaling(opt: torch.optim.Optimizer) -> None:
    """A fused SGD that a GradScaler steps starts from zero momentum buffers (which is exactly SGD's first step
    when dampening is 0), set before training and again after a resume (for parameters that have none).

    Torch's fused SGD creates its buffers with `empty_like` on its first step and fills them in the kernel, and
    the kernel returns at once when the scaler found an overflow, common at its starting scale of 2^16 on
    step 0: the next step would read uninitialised memory (wrong momentum, or NaN). The unfused SGD is not
    stepped at all after an overflow; fused Adam creates its buffers as zeros."""
    groups = opt.param_groups
    if not isinstance(opt, torch.optim.SGD) or not any(group.get("fused") for group in groups):
        return
    if any(group["dampening"] and group["momentum"] for group in groups):
        raise ConfigError(
            "optimizer.fused=true with dampening under fp16 loss scaling can start from uninitialised momentum; "
            "use optimizer.fused=null, dampening=0 or another precision (e.g. precision=bf16)"
        )
    start_momentum(opt)


TORCH_FOLDER = str(Path(torch.__file__).parent)


@contextlib.contextmanager
def _settings_checked_by(group: str, section: DictConfig) -> Iterator[None]:
    """torch refusing the settings it was given (its optimizers and schedulers raise ValueError: "Nesterov
    momentum requires a momentum and zero dampening") -> one line naming the group, not a traceback. An error
    raised anywhere else (a bug in a schedule of one's own) keeps its traceback."""
    try:
        yield
    except (ValueError, TypeError) as err:
        if not traceback.extract_tb(err.__traceback__)[-1].filename.startswith(TORCH_FOLDER):
            raise
        raise ConfigError(
            f"{group} ({section.get('_target_')}) refused its settings: {first_line(err)}; change the {group} "
            f"group's keys"
        ) from err


def optimizer(optimizer_cfg: DictConfig, params: nn.Module, lr: float, **options: bool) -> torch.optim.Optimizer:
    """The configured optimizer over `params.parameters()`, at `lr`."""
    make = instantiate(optimizer_cfg, _convert_="all")
    with _settings_checked_by("optimizer", optimizer_cfg):
        return make(params.parameters(), lr=lr, **options)


def scheduler(
    cfg: DictConfig, opt: torch.optim.Optimizer, lr_min: float | None, lr_max: float, steps_per_epoch: int
) -> Stepped:
    """The `scheduler` group's schedule over the run's epochs (schedule.py: its interface), built with the derived
    LRs in place (`${.lr_min}`, `${optimizer.lr}` read them) and given the arguments of the interface it takes."""
    section = OmegaConf.to_container(with_lrs(cfg, lr_min, lr_max).scheduler, resolve=True)
    plain = {key: value for key, value in section.items() if key not in targets.CONSUMED["scheduler"]}
    make = instantiate(plain)
    supplied = {"lr_min": lr_min, "lr_max": lr_max, "epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch}
    params = inspect.signature(make).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    given = {key: value for key, value in supplied.items() if key not in plain and (takes_any or key in params)}
    with _settings_checked_by("scheduler", cfg.scheduler):
        schedule = make(opt, **given)
    return Stepped(
        schedule, section.get("interval") or _default_interval(schedule), section.get("monitor") or "test_loss"
    )


def _default_interval(schedule: object) -> str:
    return "epoch" if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau) else "step"


def with_lrs(cfg: DictConfig, lr_min: float | None, lr_max: float) -> DictConfig:
    """The config with the run's LRMAX as `optimizer.lr` and LRMIN as `scheduler.lr_min` (where it has one), so
    that a schedule's keys interpolating them get the numbers."""
    resolved = copy.deepcopy(cfg)
    with open_dict(resolved):
        resolved.optimizer.lr = lr_max
        if lr_min is not None:
            resolved.scheduler.lr_min = lr_min
    return resolved


def check_schedule(cfg: DictConfig, steps_per_epoch: int) -> None:
    """Build the run's schedule once on a stand-in optimizer: a schedule the run cannot have (a peak outside the
    run's steps) is then refused in one line before the range test, which can take minutes, rather than after."""
    stand_in = optimizer(cfg.optimizer, nn.Linear(1, 1), lr=1.0)  # the configured optimizer: a schedule may read it
    scheduler(cfg, stand_in, lr_min=0.01, lr_max=0.1, steps_per_epoch=steps_per_epoch)


def trained_model(
    path: Path, device: torch.device, flag: str = "checkpoint=", allowed: set[str] | None = None
) -> tuple[nn.Module, dict]:
    """The model a training run saved (last.pt, or the run's folder holding it), rebuilt from the checkpoint's
    own config, and the checkpoint.

    The checkpoint is a file from disk: its model's `_target_` must be one that the package or the user's own
    config folders (the `--config-dir` the run trained with) name (`allowed`: `targets.permitted`; default: the
    package's alone), and nothing else in it is
    imported or built. Anything else, or weights that do not fit, is a one-line UsageError naming the
    command's option for a checkpoint (`flag`).
    """
    if path.is_dir() and (path / "last.pt").is_file():  # the run's folder: its checkpoint
        path = path / "last.pt"
    checkpoint = state.read_trained(path, device, flag)
    fix = state.trained_fix(flag)
    config = checkpoint["config"]
    permission = "pass the --config-dir that names its model (the one it trained with)"
    try:
        model_cfg = schema.validate_model(config.get("model") if isinstance(config, dict) else None,
                                          targets.permitted() if allowed is None else allowed, permission)  # fmt: skip
    except ConfigError as err:
        # a model this command may not build names its own fix (--config-dir); any other: another checkpoint
        other = "" if permission in str(err) else f"; or {fix}"
        raise UsageError(f"{path}: its saved model cannot be rebuilt here ({err}){other}") from None
    network = model(model_cfg.model_dump(by_alias=True, exclude_unset=True), StepSettings(device=torch.device("cpu")))
    try:
        network.load_state_dict(checkpoint["model"])
    except (RuntimeError, TypeError, AttributeError):
        raise UsageError(f"{path}: its weights do not fit the model {config['model']}; {fix}") from None
    bad = sum(int((~torch.isfinite(t)).sum()) for t in network.state_dict().values() if t.is_floating_point())
    if bad:  # e.g. the last.pt of a run that diverged: whatever it predicts means nothing
        logging.getLogger(__name__).warning(
            "%s holds %d non-finite weights (did its training diverge?): its predictions mean nothing",
            path,
            bad,
        )
    return network.to(device), checkpoint
