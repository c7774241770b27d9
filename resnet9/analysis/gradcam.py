"""GradCAM (the grad-cam package) on the network's last residual block: where the model looked.

For ResNet9 the target layer is `layer3.res`, the residual branch R2 at 512 channels and 4x4 resolution — the
last block with spatial extent before the global max-pool, the usual choice for this network. Another model
names its own with a `gradcam_layer` attribute (a module), or gets its last convolution. Each map is taken
for the class the model *predicted*, so for a mistake it shows what convinced the model; grad-cam upsamples
it to 32x32 and normalizes it to 0..1.
"""

from __future__ import annotations

import numpy as np
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from resnet9.data import augment


def target_layer(model: nn.Module) -> str | None:
    """The name of the module GradCAM explains: ResNet9's `layer3.res`, a model's own `gradcam_layer`, or
    the last convolution; None for a model with none."""
    names = {module: name for name, module in model.named_modules()}
    chosen = getattr(model, "gradcam_layer", None)
    if isinstance(chosen, nn.Module) and chosen in names:
        return names[chosen]
    if "layer3.res" in dict(model.named_modules()):
        return "layer3.res"
    convolutions = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    return convolutions[-1] if convolutions else None


def class_activation_maps(
    model: nn.Module, images: np.ndarray, classes: list[int], stats: augment.Stats = augment.CIFAR10_STATS
) -> np.ndarray:
    """(N, 32, 32, 3) uint8 test images -> (N, 32, 32) maps in 0..1 for the given class of each image."""
    if len(images) == 0:
        return np.zeros((0, 32, 32), dtype=np.float32)
    device = next(model.parameters()).device
    model.eval()
    layer = dict(model.named_modules())[target_layer(model)]
    with GradCAM(model=model, target_layers=[layer]) as cam:
        return cam(
            input_tensor=augment.normalize_images(images, stats).to(device),
            targets=[ClassifierOutputTarget(c) for c in classes],
        )


def overlays(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The maps as a colour heat map over each image (uint8, half and half)."""
    if len(images) == 0:
        return images
    return np.stack(
        [show_cam_on_image(image / 255.0, heat, use_rgb=True) for image, heat in zip(images, maps, strict=True)]
    )
