import json
import logging
import os
import sys
import typing
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from resnet9.core.errors import ConfigError
from resnet9.data import augment
from resnet9.models.resnet9 import ResNet9
from resnet9.training.config import schema
from resnet9.training.engine import build

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("model", "augment", "optimizer", "scheduler", "logger", "data", "callbacks")
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


def compose_with(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_defaults_are_the_mission():
    cfg = compose_with()
    schema.validate(cfg)
    assert (cfg.epochs, cfg.batch_size, cfg.scheduler.peak_epoch) == (24, 512, "auto")  # = epoch 5 of 24
    assert cfg.optimizer.lr == "auto" and cfg.scheduler.lr_min == "auto"
    assert cfg.model.width == 1.0 and cfg.augment.cutout == 8 and cfg.augment.pad == 4
    assert cfg.logger.mode == "offline"
    assert cfg.scheduler._target_ == "resnet9.training.engine.schedule.one_cycle"


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_validates_and_instantiates(group, option):
    cfg = compose_with(f"{group}={option}")
    schema.validate(cfg)
    built = None if group == "data" else instantiate(cfg[group], _convert_="all")
    if group == "model":
        assert isinstance(built, ResNet9)
    elif group == "augment":
        assert isinstance(built, augment.Augmentation) and built.engine == "auto" or isinstance(built, augment.Pipeline)
        assert callable(built.train_loader) and callable(built.test_loader)
    elif group == "data":  # the data set's function, its trainer-read keys set apart (targets.CONSUMED)
        assert cfg.data.num_classes == cfg.model.num_classes and len(cfg.data.mean) == 3
    elif group == "callbacks":
        assert all(callable(getattr(c, "on_epoch_end", None)) for c in built.values())
    elif group == "optimizer":
        optimizer = built([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        assert isinstance(optimizer, torch.optim.Optimizer)
    else:  # scheduler and logger are partials completed by the trainer
        assert callable(built)


def test_the_group_options_we_document_exist():
    assert {("optimizer", "sgd"), ("optimizer", "adam"), ("optimizer", "adamw"), ("augment", "cutout"),
            ("augment", "none"), ("augment", "albumentations"), ("scheduler", "onecycle"), ("scheduler", "piecewise"),
            ("scheduler", "cosine"), ("logger", "wandb"), ("logger", "none"), ("data", "cifar10"),
            ("data", "cifar100"), ("callbacks", "none"), ("callbacks", "weight_norm")} <= set(OPTIONS)  # fmt: skip


def test_typod_group_option_and_key_fail_in_composition():
    with pytest.raises(MissingConfigException, match="optimizer/sgdd"):
        compose_with("optimizer=sgdd")
    with pytest.raises(ConfigCompositionException, match="epochz"):
        compose_with("epochz=3")


BAD = [
    (("optimizer.lr=-1",), "optimizer.lr must be a number > 0 or 'auto', got -1; e.g. optimizer.lr=0.4"),
    (("optimizer.lr=fast",), "optimizer.lr must be a number > 0 or 'auto', got 'fast'"),
    (("batch_size=0",), "batch_size must be greater than or equal to 1, got 0; e.g. batch_size=512"),
    (("epochs=0",), "epochs must be greater than or equal to 1, got 0; e.g. epochs=24"),
    (("epochs=two",), "epochs must be a valid integer, got 'two'; e.g. epochs=24"),
    (("epochs=true",), "epochs must be a valid integer, got True"),
    (("scheduler.peak_epoch=30",), "scheduler.peak_epoch must lie inside the run"),
    (("epochs=4", "scheduler.peak_epoch=5"), "must lie inside the run (0 < peak_epoch < epochs=4), got 5.0"),
    (("scheduler.lr_min=0.5", "optimizer.lr=0.1"), "must be below the peak optimizer.lr"),
    (("scheduler.lr_min=0",), "scheduler.lr_min must be a number > 0 or 'auto'"),
    (("model.width=0",), "model.width must be greater than 0, got 0; e.g. model.width=1.0"),
    (("optimizer.lr=${oops}",), "optimizer.lr cannot be resolved (Interpolation key 'oops' not found); give a"),
    (("model.width=1e6",), "model.width must be less than or equal to 8, got 1000000.0; e.g. model.width=1.0"),
    (("data.limit_train=5",), "data.limit_train must be greater than or equal to 10, got 5; e.g. data.limit_train=1"),
    (("data.limit_train=100",), "batch_size=512 is larger than the 100 training images"),
    (("augment.cutout=2000",), "augment.cutout must be less than or equal to 1024, got 2000; e.g. augment.cutout=8"),
    (("augment.engine=gpu",), "augment.engine must be 'auto', 'device' or 'albumentations', got 'gpu'"),
    (("device=tpu",), "device must be auto, cpu or cuda[:N], got 'tpu'; e.g. device=auto"),
    (("logger.mode=sometimes",), "logger.mode must be 'offline', 'online' or 'disabled', got 'sometimes'"),
    (("lr_finder.num_iter=5",), "lr_finder.num_iter must be an integer >= 25"),
    (("lr_finder.scale=-2",), "lr_finder.scale must be greater than 0, got -2"),
    (("lr_finder.end_lr=1e-6",), "lr_finder.end_lr must be above lr_finder.start_lr"),
    (("label_smoothing=1",), "label_smoothing must be less than 1, got 1; e.g. label_smoothing=0.2"),
    (("optimizer.lr=inf",), "optimizer.lr must be a number > 0 or 'auto', got inf"),
    (("model.width=nan",), "model.width must be a finite number, got nan"),
    (("ema.decay=0.9", "ema.start_epoch=30"), "ema.start_epoch must be in 1..epochs=24, got 30"),
    (("precision=fp8",), "precision must be 'auto', 'fp32', 'bf16' or 'fp16', got 'fp8'"),
    (("optimizer=adam", "optimizer.betas=[0.9,1.5]"), "optimizer.betas[1] must be less than 1, got 1.5"),
    (("optimizer.momentum=0",), "optimizer.nesterov=true needs momentum, got optimizer.momentum=0; e.g. optimi"),
    (("seed=-1",), "seed must be greater than or equal to 0, got -1; e.g. seed=0"),
    (("lr_finder.seed=4294967296",), "lr_finder.seed must be less than or equal to 4294967295, got 4294967296"),
    (
        ("optimizer.lr=0.1", "scheduler.lr_min=0.01", "+scheduler.peak_epoch=2", "scheduler=cosine"),
        "scheduler.peak_epoch is not an argument of resnet9.training.engine.schedule.warmup_cosine(optimizer, lr_min, "
        "lr_max, epochs, ",
    ),
    (("optimizer=adamw", "+optimizer.depth=3"), "optimizer.depth is not an argument of torch.optim.AdamW(params, lr,"),
    (
        ("model._target_=resnet9.models.resnet9.ResNet10",),
        "model._target_=resnet9.models.resnet9.ResNet10: resnet9.models.resnet9 has no 'ResN",
    ),
    (("model._target_=mymodels.TinyNet",), "model._target_=mymodels.TinyNet cannot be imported (no module 'mymode"),
    (
        ("data.mean=[0.5,0.5]",),
        "data.mean and data.std must give one value per channel (3: data.channels=3), got 2 "
        "and 3; e.g. data.mean=[0.5,0.5,0.5]",
    ),
    (("data.channels=1",), "data.mean and data.std must give one value per channel (1: data.channels=1), got 3 and 3"),
    (("data.channels=2",), "data.channels must be 1 or 3, got 2; e.g. data.channels=3"),
    (
        ("data.image_size=[32,4]",),
        "data.image_size must be a side >= 8 or [height,width], each >= 8, got [32, 4]; e.g. data.image_size=32",
    ),
    (
        ("model.in_channels=1",),
        "model.in_channels=1 but the data set's images have 3 channel(s) (data.channels); e.g. "
        "model.in_channels=3, or follow the data: model.in_channels=${data.channels}",
    ),
    (("~epochs",), "epochs is missing; e.g. epochs=24"),  # a missing key by its own name, not its section's
    (
        ("~scheduler.lr_min",),
        "scheduler.lr_min is missing: resnet9.training.engine.schedule.one_cycle(optimizer, lr_min,",
    ),
    (("~optimizer.lr",), "optimizer.lr is missing; e.g. optimizer.lr=0.4"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_fail_validation_with_a_one_line_fix(overrides, message):
    with pytest.raises(ConfigError) as err:
        schema.validate(compose_with(*overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert "; " in str(err.value)  # what was wrong; how to fix it


def test_settings_an_optimizer_itself_refuses_are_one_line_naming_the_group():
    """SGD without momentum (its default, 0) but with nesterov=true: torch's own check, in one line."""
    cfg = compose_with("~optimizer.momentum")
    schema.validate(cfg)
    with pytest.raises(ConfigError) as err:
        build.optimizer(cfg.optimizer, torch.nn.Linear(2, 2), lr=0.1)
    assert str(err.value) == (
        "optimizer (torch.optim.SGD) refused its settings: Nesterov momentum requires a momentum and zero "
        "dampening; change the optimizer group's keys"
    )


def test_every_key_of_config_yaml_is_typed_and_its_default_only_in_the_yaml():
    """The schema mirrors conf/: a key of a section is declared by a field (a top-level key may instead be typed by
    its default's type in config.yaml); a key the YAML does not have is refused, so none can slip past validation;
    and a setting the YAML gives has no second default in the schema (it is required there)."""
    plain = OmegaConf.to_container(compose_with(), resolve=True)
    sections = {"": (schema.TrainConfig, plain), "lr_finder.": (schema.LRFinderConfig, plain["lr_finder"]),
                "ema.": (schema.EMAConfig, plain["ema"]), "data.": (schema.DataConfig, plain["data"])}  # fmt: skip
    for prefix, (section, values) in sections.items():
        fields = {field.alias or name: field for name, field in section.model_fields.items()}
        by_default = {k for k in set(values) - set(fields) if prefix == "" and schema.package_default((k,)) is not None}
        assert set(values) - by_default <= set(fields), prefix
        written_twice = [
            prefix + key for key in set(values) & set(fields) - {"callbacks"} if not fields[key].is_required()
        ]
        assert written_twice == []
    assert {"compile", "checkpoint", "eval_tta"} <= set(plain) - set(schema.TrainConfig.model_fields)  # no field
    with pytest.raises(ConfigError, match="epochz is not a setting here"):
        schema.validate({**plain, "epochz": 3})  # a key added behind Hydra's back
    with pytest.raises(ConfigError, match=r"^compile must be true or false, got 1; e.g. compile=false$"):
        schema.validate({**plain, "compile": 1})  # typed by its default


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        build.device("cuda")


CUDA_13_ARCHS = "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120".split()  # torch 2.14.1+cu130's get_arch_list()
OLD_DRIVER = (
    "CUDA initialization: The NVIDIA driver on your system is too old (found version 12020). Please update your GPU "
    "driver by downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx "
    "Alternatively, go to: https://pytorch.org to install a PyTorch version that has been compiled with your version "
    "of the CUDA driver. (Triggered internally at /pytorch/c10/cuda/CUDAFunctions.cpp:119.)"
)  # torch's words (c10/cuda/CUDAFunctions.cpp), given once per process, when it first looks for GPUs


def a_machine(monkeypatch, gpu: tuple[str, tuple[int, int]] | None, driver_warning: str | None = None) -> None:
    """torch.cuda as it answers on a machine with one GPU (name, compute capability), or none usable: with
    `driver_warning`, is_available() is False and warns as torch does, on its first call only."""
    said = [driver_warning] if driver_warning else []

    def is_available() -> bool:
        if said:
            warnings.warn(said.pop(), UserWarning, stacklevel=2)
        return gpu is not None and driver_warning is None

    monkeypatch.setattr(build, "_CUDA_INIT_WARNINGS", [])
    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(is_available()))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: CUDA_13_ARCHS)
    if gpu is not None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: gpu[0])
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: gpu[1])


@pytest.mark.parametrize(
    "gpu, expected",
    [(("Tesla T4", (7, 5)), "cuda"), (("NVIDIA GeForce RTX 4090", (8, 9)), "cuda"), (("NVIDIA H100", (9, 0)), "cuda"),
     (("NVIDIA B300", (10, 3)), "cuda"), (("Tesla V100-SXM2-16GB", (7, 0)), "cpu"), (("Tesla P100", (6, 0)), "cpu")],
)  # fmt: skip
def test_auto_uses_a_gpu_only_where_torch_has_kernels_for_it(monkeypatch, caplog, gpu, expected):
    a_machine(monkeypatch, gpu)
    with caplog.at_level(logging.WARNING, logger="resnet9"):
        assert build.device("auto").type == expected
    if expected == "cpu":
        reason = f"this torch {torch.__version__} has no kernels for the {gpu[0]}: it is sm_{gpu[1][0]}{gpu[1][1]}"
        (line,) = caplog.messages
        assert line.startswith(f"device=auto: this machine has a GPU but torch cannot use it ({reason}, torch has")
        assert "training on the CPU" in line and "--index-url https://download.pytorch.org/whl/cu126" in line
        with pytest.raises(ConfigError) as refused:
            build.device("cuda")
        assert str(refused.value).startswith(f"device=cuda but torch cannot use this GPU ({reason}, torch has sm_75")
        assert "\n" not in str(refused.value)
    else:
        assert not caplog.messages and build.device("cuda").type == "cuda"


def test_a_driver_too_old_for_this_torch_is_named_by_auto_and_by_cuda(monkeypatch, caplog):
    a_machine(monkeypatch, ("Tesla T4", (7, 5)), OLD_DRIVER)
    with caplog.at_level(logging.WARNING, logger="resnet9"), warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own long warning is replaced by the one line below
        assert build.device("auto").type == "cpu"
    (line,) = caplog.messages
    reason = (
        f"The NVIDIA driver on your system is too old (found version 12020); this torch {torch.__version__} is built "
        f"for CUDA {torch.version.cuda}"
    )
    assert line.startswith(f"device=auto: this machine has a GPU but torch cannot use it ({reason}); training on")
    with pytest.raises(ConfigError) as refused:  # later calls: torch does not warn again, the reason was kept
        build.device("cuda")
    assert str(refused.value).startswith(f"device=cuda but torch cannot use this GPU ({reason}); update the NVIDIA")


def test_a_machine_without_a_gpu_trains_on_the_cpu_without_a_word(monkeypatch, caplog):
    a_machine(monkeypatch, None)
    with caplog.at_level(logging.WARNING, logger="resnet9"):
        assert build.device("auto").type == "cpu"
    assert not caplog.messages
    with pytest.raises(ConfigError, match="^device=cuda:1 but no CUDA GPU is visible to torch; use device=cpu"):
        build.device("cuda:1")


def test_cli_bad_value_prints_one_line_and_exits_2(run_cli, tmp_path):
    result = run_cli("resnet9.train", "optimizer.lr=-1", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: optimizer.lr must be a number > 0 or 'auto', got -1; e.g. optimizer.lr=0.4"
    ]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())  # nothing started, but the job has its record
    assert (record["status"], record["ended_in"], record["overrides"]) == ("failed", "setup", ["optimizer.lr=-1"])
    assert record["error"] == result.stderr.strip().removeprefix("error: ")
    assert "error: optimizer.lr must be" in (tmp_path / "run" / "train.log").read_text()  # the log has it too


@pytest.mark.parametrize(
    "command, override, line",
    [
        (
            "resnet9.train",
            "optimizer=sgdd",
            "error: optimizer=sgdd is not an option of optimizer; choose one of adam, adamw, sgd",
        ),
        ("resnet9.train", "optimizer=sub/adamw", "error: optimizer=sub/adamw is not an option of optimizer; choose"),
        ("resnet9.train", "epoch=3", "error: epoch is not a setting (did you mean epochs?); --cfg job prints every"),
        ("resnet9.summary", "model.widht=2", "error: model.widht is not a setting (did you mean model.width?)"),
        ("resnet9.evaluate", "epochs=3", "error: epochs is not a setting; --cfg job prints every setting"),
    ],
)
def test_cli_typod_option_or_key_is_one_line_before_anything_runs(run_cli, tmp_path, command, override, line):
    result = run_cli(command, override, f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 2
    (error,) = result.stderr.strip().splitlines()  # not Hydra's own report (its search path, its key's type)
    assert error.startswith(line)
    assert not (tmp_path / "run").exists()


def test_cli_unresolvable_override_is_one_line_and_the_jobs_record_keeps_it_as_written(run_cli, tmp_path):
    result = run_cli("resnet9.train", "optimizer.lr=${oops}", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()  # (the job's overrides were read resolved: a traceback)
    assert line.startswith("error: optimizer.lr cannot be resolved (Interpolation key 'oops' not found)")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["overrides"] == ["optimizer.lr=${oops}"] and record["status"] == "failed"


def test_hydras_answers_to_help_flags_are_one_line_on_a_typo(monkeypatch, capsys):
    from resnet9 import cli

    monkeypatch.setattr(sys, "argv", ["resnet9-train", "hydra/sweeper=nope", "--cfg", "job"])
    with pytest.raises(SystemExit) as exit_status:
        cli.train()
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: hydra/sweeper=nope is not an option of hydra/sweeper; choose one of basic, compose_once, resnet9_optuna"
    ]
    assert "HYDRA_FULL_ERROR" not in os.environ  # set only while the command runs


def test_cli_missing_data_is_one_line(run_cli, tmp_path):
    result = run_cli(
        "resnet9.train", f"data.root={tmp_path}/empty", "data.download=false", f"hydra.run.dir={tmp_path}/run"
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: CIFAR-10 not found") and f"{tmp_path}/empty/cifar-10-batches-py" in line


def test_hydras_full_error_mode_is_ours_only_until_the_task_starts(monkeypatch):
    """Set in the environment (where Hydra reads it) around composition, handed back when the task starts; a
    user's own HYDRA_FULL_ERROR=1 is left alone."""
    from resnet9.core.errors import exit_on_usage_error, hydra_errors_in_one_line

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with hydra_errors_in_one_line():
        assert os.environ["HYDRA_FULL_ERROR"] == "1"  # composition errors reach our one-line handler
        with exit_on_usage_error():  # the task starts: Hydra's own report of its failures again
            assert "HYDRA_FULL_ERROR" not in os.environ
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with hydra_errors_in_one_line(), exit_on_usage_error():
        assert os.environ["HYDRA_FULL_ERROR"] == "1"


def _fields_with_examples(section, prefix=()):
    for name, field in section.model_fields.items():
        key = (*prefix, field.alias or name)
        if field.examples:
            yield key, field.examples[0]
        for inner in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(inner, type) and issubclass(inner, schema.Section):
                yield from _fields_with_examples(inner, key)


def test_the_schema_restates_no_default_of_the_yaml():
    """A field of the training config names `examples` only where the YAML's default is none a message could offer
    (null, auto, an interpolation); every other message takes its example from the YAML (schema.package_default)."""
    restated = []
    for key, example in _fields_with_examples(schema.TrainConfig):
        default = schema.package_default(key)
        as_yaml = json.dumps(default, separators=(",", ":")) if isinstance(default, list) else default
        if schema._usable_example(default) and example in (default, as_yaml):
            restated.append(".".join(key))
    assert restated == []
    assert len(list(_fields_with_examples(schema.TrainConfig))) >= 5  # (the walk finds the fields that have some)
