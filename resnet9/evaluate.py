"""Evaluate a checkpoint on the test set: accuracy with and without flip TTA, per-class accuracy, a confusion
matrix, a gallery of the most confident mistakes, and their GradCAM maps (see explain.py).

    python -m resnet9.evaluate checkpoint=outputs/2026-11-26/14-00-00/last.pt

The model, data root, test subset and precision come from the configuration saved in the checkpoint;
overrides (`data.root=...`, `device=cpu`, ...) change them. Writes evaluation.json, confusion_matrix.png,
misclassified.png and gradcam.png into its output folder (outputs/evaluate/<date>/<time>/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn

from resnet9 import config, data, explain, plots, tracking
from resnet9.augment import DeviceLoader
from resnet9.loop import StepSettings, predict


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The model a training run saved, rebuilt from the checkpoint's own config; one-line errors otherwise."""
    path = Path(to_absolute_path(str(path)))
    fix = "pass checkpoint=<run folder>/last.pt as written by resnet9.train"
    if not path.is_file():
        raise config.UsageError(f"checkpoint not found: {path}; {fix}")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # not a torch file, truncated, or holding objects we do not load
        raise config.UsageError(f"{path} is not a readable checkpoint ({type(err).__name__}); {fix}") from None
    if not isinstance(checkpoint, dict) or not {"model", "config"} <= checkpoint.keys():
        raise config.UsageError(f"{path} holds no model weights and config; {fix}")
    model_cfg = checkpoint["config"]["model"]
    model = instantiate(OmegaConf.create(model_cfg))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError:
        raise config.UsageError(f"{path}: its weights do not fit the model {model_cfg}; {fix}") from None
    return model.to(device), checkpoint


def evaluate_checkpoint(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    device = config.resolve_device(cfg.device)
    model, checkpoint = load_checkpoint(cfg.checkpoint, device)
    run = checkpoint["config"]
    root = cfg.data.root or run["data"]["root"]
    limit_test = cfg.data.limit_test if cfg.data.limit_test is not None else run["data"]["limit_test"]
    with config.data_errors_as_usage_errors():
        dataset = data.load(to_absolute_path(root), cfg.data.download, limit_test=limit_test)
    memory_format = torch.channels_last if run.get("channels_last", True) else torch.contiguous_format
    settings = StepSettings(
        device=device,
        memory_format=memory_format,
        autocast_dtype=config.autocast_dtype(run.get("precision", "auto"), device),
    )
    model = model.to(memory_format=memory_format)
    loader = DeviceLoader(
        dataset.test_images, dataset.test_labels, cfg.batch_size or run["eval_batch_size"], device, train=False,
        memory_format=memory_format,
    )  # fmt: skip
    logits, labels = predict(model, loader, settings)
    logits_tta, _ = predict(model, loader, settings, tta=True)
    probs = torch.softmax(logits, 1).cpu().numpy()
    truth = labels.cpu().numpy()
    predicted = probs.argmax(1)
    classes = dataset.classes

    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    accuracy = float((predicted == truth).mean())
    accuracy_tta = int((logits_tta.argmax(1) == labels).sum()) / len(truth)
    per_class = {name: float(confusion[c, c] / confusion[c].sum()) for c, name in enumerate(classes)}

    wrong = np.flatnonzero(predicted != truth)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][: cfg.gallery_size]
    captions = [
        f"true: {classes[truth[i]]}\npredicted: {classes[predicted[i]]} ({100 * probs[i, predicted[i]]:.0f}%)"
        for i in wrong
    ]
    name = "/".join(Path(str(cfg.checkpoint)).parts[-3:-1]) or str(cfg.checkpoint)  # e.g. <date>/<time> of the run
    plots.confusion_matrix(
        confusion, classes, out_dir / "confusion_matrix.png",
        title=f"{name}: test accuracy {100 * accuracy:.2f}% on {len(truth):,} images",
    )  # fmt: skip
    plots.image_gallery(
        dataset.test_images[wrong], captions, out_dir / "misclassified.png",
        title=f"{name}: the {len(wrong)} most confident mistakes",
    )  # fmt: skip
    maps = explain.class_activation_maps(model.float(), dataset.test_images[wrong], predicted[wrong].tolist())
    plots.image_gallery(  # an empty grid when there is no mistake to explain
        explain.overlays(dataset.test_images[wrong], maps), captions, out_dir / "gradcam.png",
        title=f"{name}: GradCAM on the last residual block, for the predicted class",
    )  # fmt: skip
    results = {
        "checkpoint": str(Path(to_absolute_path(str(cfg.checkpoint)))),
        "epoch": checkpoint.get("epoch"),
        "n_test": int(len(truth)),
        "test_acc": accuracy,
        "test_acc_flip_tta": accuracy_tta,
        "per_class_acc": per_class,
        "confusion_matrix": confusion.tolist(),
        "classes": list(classes),
    }
    tracking.write_json(out_dir / "evaluation.json", results)
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with config.exit_on_usage_error():
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        results = evaluate_checkpoint(cfg, out_dir)
    print(f"test accuracy {100 * results['test_acc']:.2f}%, with flip TTA {100 * results['test_acc_flip_tta']:.2f}%"
          f" ({results['n_test']:,} images, checkpoint of epoch {results['epoch']})")  # fmt: skip
    print("\n| class | accuracy (%) |\n|---|---|")
    for name, acc in results["per_class_acc"].items():
        print(f"| {name} | {100 * acc:.1f} |")
    print(f"\nwritten to {out_dir}: evaluation.json, confusion_matrix.png, misclassified.png, gradcam.png")


if __name__ == "__main__":
    main()
