"""GradCAM (the grad-cam package) on the network's last residual block: where the model looked.

The target layer is `layer3.res`, the residual branch R2 at 512 channels and 4x4 resolution — the last
block with spatial extent before the global max-pool, the usual choice for this network. Each map is taken
for the class the model *predicted*, so for a mistake it shows what convinced the model; grad-cam upsamples
it to 32x32 and normalizes it to 0..1.
"""

from __future__ import annotations

import numpy as np
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from resnet9 import augment
from resnet9.model import ResNet9


def class_activation_maps(model: ResNet9, images: np.ndarray, classes: list[int]) -> np.ndarray:
    """(N, 32, 32, 3) uint8 test images -> (N, 32, 32) maps in 0..1 for the given class of each image."""
    if len(images) == 0:
        return np.zeros((0, 32, 32), dtype=np.float32)
    device = next(model.parameters()).device
    model.eval()
    with GradCAM(model=model, target_layers=[model.layer3.res]) as cam:
        return cam(
            input_tensor=augment.normalize_images(images).to(device),
            targets=[ClassifierOutputTarget(c) for c in classes],
        )


def overlays(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The maps as a colour heat map over each image (uint8, half and half)."""
    if len(images) == 0:
        return images
    return np.stack(
        [show_cam_on_image(image / 255.0, heat, use_rgb=True) for image, heat in zip(images, maps, strict=True)]
    )
