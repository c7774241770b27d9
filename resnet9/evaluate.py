"""Evaluate a checkpoint on the test set: accuracy with and without flip TTA, per-class accuracy, a confusion
matrix, a gallery of the most confident mistakes, and their GradCAM maps (see gradcam.py).

    python -m resnet9.evaluate checkpoint=outputs/2026-11-26/14-00-00/last.pt

The model, data root, test subset and precision come from the configuration saved in the checkpoint;
overrides (`data.root=...`, `device=cpu`, ...) change them. A checkpoint is a file from disk: what it names is
built only if the package or your own config folder names it, so a run of your own model evaluates with the
`--config-dir` it trained with (and its module importable, e.g. PYTHONPATH=.). Writes evaluation.json,
confusion_matrix.png, misclassified.png and gradcam.png into its output folder (outputs/evaluate/<date>/<time>/).
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m resnet9.evaluate --version` (or --help): answered before torch is imported
    from resnet9.cli import answer_if_asked

    answer_if_asked("evaluate")

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from resnet9.analysis import plots
from resnet9.core import files
from resnet9.core.errors import ConfigError, UsageError, exit_on_usage_error, hydra_errors_in_one_line
from resnet9.data.augment import Stats
from resnet9.data.datasets import ImageData
from resnet9.training.config import schema, targets
from resnet9.training.engine import build
from resnet9.training.engine.loop import predict


def evaluate_checkpoint(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Evaluate the checkpoint on the run's test images; write evaluation.json and the three figures."""
    device = build.device(cfg.device)
    path = Path(to_absolute_path(str(cfg.checkpoint)))
    allowed = targets.permitted(user_config_dirs())  # what a checkpoint may name: read once, used twice
    model, checkpoint = build.trained_model(path, device, allowed=allowed)
    run = _run_config(checkpoint, cfg, path, allowed)
    data_set = runs_data_set(run, checkpoint.get("test_digest"), path, check=cfg.data.limit_test is None)
    settings = build.step_settings(run, device)
    model = model.to(memory_format=settings.memory_format)
    loader = build.test_loader(run, data_set, settings)
    logits, labels = predict(model, loader, settings)
    logits_tta, _ = predict(model, loader, settings, tta=True)
    results = _scores(logits, logits_tta, labels, data_set.classes)
    results |= {"checkpoint": str(Path(to_absolute_path(str(cfg.checkpoint)))), "epoch": checkpoint.get("epoch")}
    _draw(model, data_set, results, logits, cfg, out_dir, build.normalization(run.data))
    files.write_json(out_dir / "evaluation.json", results)
    return results


def runs_data_set(run: DictConfig, recorded_digest: Any, path: Path, check: bool = True) -> ImageData:
    """The data set as the run loaded it: the same arguments after the same seeding (a data set function may
    draw its split from them, or from the random state), checked against the test images the run recorded."""
    build.seed_everything(run.seed)
    images = build.dataset(run.data)
    if check and isinstance(recorded_digest, str) and images.test_digest() != recorded_digest:
        raise UsageError(
            f"{run.data._target_} gave other test images than the run in {path.parent} was scored on; make its "
            f"test split depend only on its arguments and the seed (and check data.root), or pass "
            f"data.limit_test=<n> to score another subset knowingly"
        )
    return images


def user_config_dirs() -> list[str]:
    """The config folders this command was given besides the package's (`--config-dir`, hydra.searchpath)."""
    if not HydraConfig.initialized():  # called as a function (tests, notebooks): the package's configs only
        return []
    sources = HydraConfig.get().runtime.config_sources
    return [source.path for source in sources if source.schema == "file"]


def _run_config(checkpoint: dict, cfg: DictConfig, path: Path, allowed: set[str]) -> DictConfig:
    """The run's saved config with this command's overrides, validated before anything is built from it: a
    checkpoint is a file from disk, so every `_target_` in it must be one the package or the user's config
    folders name (nothing else is imported)."""
    how = "pass the --config-dir the run trained with"
    try:
        run = OmegaConf.create(_upgraded(checkpoint["config"]))
        schema.validate_saved(OmegaConf.to_container(run), allowed, how)  # before reading anything from it
        run.data.root = cfg.data.root or run.data.root  # the same test images as the run, unless told otherwise
        run.data.limit_test = cfg.data.limit_test if cfg.data.limit_test is not None else run.data.limit_test
        run.data.download = cfg.data.download  # limit_train as in the run: a test split may depend on it
        run.eval_batch_size = cfg.batch_size or run.eval_batch_size  # the run's own batches: the same numbers
        if run.augment.get("engine") is not None:  # the mission's augmentation: evaluate on the device engine
            run.augment.engine = "device"
        schema.validate(run)
    except (ConfigError, OmegaConfBaseException) as err:
        raise UsageError(f"{path}: its saved config is not one resnet9.train writes ({err})") from None
    return run


def _upgraded(config: Any) -> Any:
    """A config saved by an earlier resnet9: its targets under their current names; before the `data` group,
    CIFAR-10 as then, with that option's keys; before data options stated their images' shape, CIFAR's (the only
    one then)."""
    config = targets.current_names(config)
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        return config
    if "_target_" in config["data"]:
        return {**config, "data": {"channels": 3, "image_size": 32, **config["data"]}}
    cifar10 = OmegaConf.to_container(OmegaConf.load(targets.PACKAGE_CONF / "data" / "cifar10.yaml"))
    return {**config, "data": {**cifar10, **config["data"]}}


def _scores(logits: torch.Tensor, logits_tta: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> dict:
    """Accuracy with and without flip TTA, per-class accuracy and the confusion matrix."""
    predicted, truth = logits.argmax(1).cpu().numpy(), labels.cpu().numpy()
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    return {
        "n_test": int(len(truth)),
        "test_acc": float((predicted == truth).mean()),
        "test_acc_flip_tta": int((logits_tta.argmax(1) == labels).sum()) / len(truth),
        "per_class_acc": {name: float(confusion[c, c] / confusion[c].sum()) for c, name in enumerate(classes)},
        "confusion_matrix": confusion.tolist(),
        "classes": list(classes),
    }


def _draw(
    model: nn.Module,
    data_set: ImageData,
    results: dict,
    logits: torch.Tensor,
    cfg: DictConfig,
    out_dir: Path,
    stats: Stats,
) -> None:
    """confusion_matrix.png, misclassified.png (the most confident mistakes) and their GradCAM maps."""
    classes, truth = data_set.classes, data_set.test_labels
    probs = torch.softmax(logits, 1).cpu().numpy()
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != truth)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][: cfg.gallery_size]
    captions = [
        f"true: {classes[truth[i]]}\npredicted: {classes[predicted[i]]} ({100 * probs[i, predicted[i]]:.0f}%)"
        for i in wrong
    ]
    name = "/".join(Path(str(cfg.checkpoint)).parts[-3:-1]) or str(cfg.checkpoint)  # e.g. <date>/<time> of the run
    plots.confusion_matrix(
        np.array(results["confusion_matrix"]),
        classes,
        out_dir / "confusion_matrix.png",
        title=f"{name}: test accuracy {100 * results['test_acc']:.2f}% on {results['n_test']:,} images",
    )
    plots.image_gallery(
        data_set.test_images[wrong],
        captions,
        out_dir / "misclassified.png",
        title=f"{name}: the {len(wrong)} most confident mistakes",
    )
    from resnet9.analysis import gradcam  # grad-cam brings torchvision's models: 3.5 s of imports, paid only here

    height, width, channels = data_set.image_shape
    layer = gradcam.target_layer(model.float(), (channels, height, width))
    if layer is None:
        logging.getLogger(__name__).warning("GradCAM is not available for this model: it has no convolution")
        return
    maps = gradcam.class_activation_maps(model, data_set.test_images[wrong], predicted[wrong].tolist(), stats, layer)
    plots.image_gallery(  # an empty grid when there is no mistake to explain
        gradcam.overlays(data_set.test_images[wrong], maps),
        captions,
        out_dir / "gradcam.png",
        title=f"{name}: GradCAM on {layer}, for the predicted class",
    )


def main() -> None:
    """`python -m resnet9.evaluate checkpoint=<run>/last.pt [overrides]` (or `--checkpoint <run>/last.pt`, as
    resnet9-predict takes it)."""
    sys.argv[1:] = as_override(sys.argv[1:])
    with hydra_errors_in_one_line():
        _hydra_main()


def as_override(args: list[str]) -> list[str]:
    """`--checkpoint PATH` / `--checkpoint=PATH` -> Hydra's `checkpoint=PATH`: one way to name a checkpoint in
    both commands a user types in a row (train, then evaluate or predict)."""
    out, args = [], list(args)
    while args:
        arg = args.pop(0)
        if arg == "--checkpoint" and args:
            out.append(f"checkpoint={args.pop(0)}")
        else:
            out.append(f"checkpoint={arg.removeprefix('--checkpoint=')}" if arg.startswith("--checkpoint=") else arg)
    return out


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    with exit_on_usage_error():
        schema.validate_evaluate(cfg)
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        results = evaluate_checkpoint(cfg, out_dir)
    print(
        f"test accuracy {100 * results['test_acc']:.2f}%, with flip TTA {100 * results['test_acc_flip_tta']:.2f}%"
        f" ({results['n_test']:,} images, checkpoint of epoch {results['epoch']})"
    )
    print("\n| class | accuracy (%) |\n|---|---|")
    for name, acc in results["per_class_acc"].items():
        print(f"| {name} | {100 * acc:.1f} |")
    print(f"\nwritten to {out_dir}: evaluation.json, confusion_matrix.png, misclassified.png, gradcam.png")


if __name__ == "__main__":
    main()
