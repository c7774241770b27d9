import numpy as np
import torch

from resnet9.analysis import gradcam
from resnet9.models.resnet9 import ResNet9


def test_maps_cover_each_image_in_0_to_1_and_leave_no_hooks_behind():
    torch.manual_seed(0)
    model = ResNet9(width=0.125)
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    maps = gradcam.class_activation_maps(model, images, [0, 3, 5, 9])
    assert maps.shape == (4, 32, 32)
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    shown = gradcam.overlays(images, maps)
    assert shown.shape == (4, 32, 32, 3) and shown.dtype == np.uint8


def test_no_mistakes_no_maps():
    model = ResNet9(width=0.125)
    empty = np.zeros((0, 32, 32, 3), dtype=np.uint8)
    assert gradcam.class_activation_maps(model, empty, []).shape == (0, 32, 32)
    assert len(gradcam.overlays(empty, np.zeros((0, 32, 32)))) == 0
