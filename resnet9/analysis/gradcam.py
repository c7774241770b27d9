"""GradCAM (the grad-cam package) on the network's last residual block: where the model looked.

For ResNet9 the target layer is `layer3.res`, the residual branch R2 at 512 channels and, at 32 px, 4x4
resolution — the last block with spatial extent before the global max-pool, the usual choice for this network.
Another model names its own with a `gradcam_layer` attribute (a module), or gets its last convolution. A map is
only as fine as the layer's: where that layer's maps are smaller than 4x4 at the trained image size (ResNet9's
`layer3.res` on 28 px images is 3x3; torchvision's resnet18 at 32 px ends at 1x1), the last convolution whose
maps are 4x4 or larger is explained instead, and one warning line says so. Each map is taken for the class the
model *predicted*, so for a mistake it shows what convinced the model; grad-cam upsamples it to the image's size
and normalizes it to 0..1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from resnet9.data import augment

# The coarsest map GradCAM explains without a warning: below 4x4, an upsampled map is a blob or a gradient.
MIN_MAP = 4


def target_layer(model: nn.Module, input_shape: tuple[int, int, int] = (3, 32, 32)) -> str | None:
    """The name of the module GradCAM explains for images of `input_shape` (channels, height, width): a model's
    own `gradcam_layer`, ResNet9's `layer3.res`, or the last convolution; where that one's maps are smaller than
    MIN_MAP on a side, the last convolution whose maps are not (with one warning line). None for a model without
    a convolution."""
    names = {module: name for name, module in model.named_modules()}
    chosen = getattr(model, "gradcam_layer", None)
    convolutions = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if isinstance(chosen, nn.Module) and chosen in names:
        preferred = names[chosen]
    elif "layer3.res" in dict(model.named_modules()):
        preferred = "layer3.res"
    elif convolutions:
        preferred = convolutions[-1]
    else:
        return None
    sizes = _map_sizes(model, [preferred, *convolutions], input_shape)
    if min(sizes.get(preferred, (MIN_MAP, MIN_MAP))) >= MIN_MAP:
        return preferred
    finer = [name for name in sizes if name in convolutions and min(sizes[name]) >= MIN_MAP]  # in the order run
    image = f"{input_shape[1]}x{input_shape[2]}"
    if not finer:
        logging.getLogger(__name__).warning(
            "GradCAM on %s: its maps are %s at %s input, and no convolution's are %dx%d or larger; the maps will be "
            "coarse (a model names another with its gradcam_layer attribute)",
            preferred, _shown(sizes[preferred]), image, MIN_MAP, MIN_MAP,
        )  # fmt: skip
        return preferred
    logging.getLogger(__name__).warning(
        "GradCAM on %s (%s maps) instead of %s, whose maps are %s at %s input; a model names another with its "
        "gradcam_layer attribute",
        finer[-1], _shown(sizes[finer[-1]]), preferred, _shown(sizes[preferred]), image,
    )  # fmt: skip
    return finer[-1]


def _map_sizes(model: nn.Module, names: list[str], input_shape: tuple[int, int, int]) -> dict[str, tuple[int, int]]:
    """The (height, width) of each named module's output for one image of `input_shape`, in the order the modules
    ran; one forward pass in eval mode without gradients, so no BatchNorm statistic moves."""
    modules = dict(model.named_modules())
    sizes: dict[str, tuple[int, int]] = {}

    def recorder(name: str) -> Callable[[nn.Module, object, object], None]:
        def record(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                sizes.setdefault(name, tuple(output.shape[-2:]))

        return record

    hooks = [modules[name].register_forward_hook(recorder(name)) for name in dict.fromkeys(names)]
    training, parameter = model.training, next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    return sizes


def _shown(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def class_activation_maps(
    model: nn.Module,
    images: np.ndarray,
    classes: list[int],
    stats: augment.Stats = augment.CIFAR10_STATS,
    layer: str | None = None,
) -> np.ndarray:
    """(N, H, W, C) uint8 test images -> (N, H, W) maps in 0..1 for the given class of each image, on `layer`
    (default: `target_layer` for these images)."""
    if len(images) == 0:
        return np.zeros((0, *images.shape[1:3]), dtype=np.float32)
    device = next(model.parameters()).device
    if layer is None:
        height, width, channels = images.shape[1:]
        layer = target_layer(model, (channels, height, width))
    model.eval()
    with GradCAM(model=model, target_layers=[dict(model.named_modules())[layer]]) as cam:
        return cam(
            input_tensor=augment.normalize_images(images, stats).to(device),
            targets=[ClassifierOutputTarget(c) for c in classes],
        )


def overlays(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The maps as a colour heat map over each image (uint8, half and half; a grey image shown in grey)."""
    if len(images) == 0:
        return images
    if images.shape[-1] == 1:  # the heat map is RGB: a grey image is laid under it as three equal channels
        images = np.repeat(images, 3, axis=-1)
    return np.stack(
        [show_cam_on_image(image / 255.0, heat, use_rgb=True) for image, heat in zip(images, maps, strict=True)]
    )
