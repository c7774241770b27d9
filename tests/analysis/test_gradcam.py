import numpy as np
import pytest
import torch
from torch import nn

from resnet9.analysis import gradcam
from resnet9.data import augment
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


def test_resnet9_at_32px_is_explained_on_layer3_res_without_a_word(caplog):
    with caplog.at_level("WARNING", logger="resnet9"):
        assert gradcam.target_layer(ResNet9(width=0.125), (3, 32, 32)) == "layer3.res"  # its maps are 4x4
    assert not caplog.records


LAYER_CHOICES = [
    # (model, input shape, layer explained, the one warning line)
    ("resnet18", (3, 32, 32), "layer2.1.conv2",
     "GradCAM on layer2.1.conv2 (4x4 maps) instead of layer4.1.conv2, whose maps are 1x1 at 32x32 input; a model "
     "names another with its gradcam_layer attribute"),
    ("resnet9", (1, 28, 28), "layer3.conv.0",
     "GradCAM on layer3.conv.0 (7x7 maps) instead of layer3.res, whose maps are 3x3 at 28x28 input; a model names "
     "another with its gradcam_layer attribute"),
    ("resnet9", (3, 8, 8), "layer2.0",
     "GradCAM on layer2.0 (4x4 maps) instead of layer3.res, whose maps are 1x1 at 8x8 input; a model names "
     "another with its gradcam_layer attribute"),
    ("strided", (3, 8, 8), "0",
     "GradCAM on 0: its maps are 2x2 at 8x8 input, and no convolution's are 4x4 or larger; the maps will be coarse "
     "(a model names another with its gradcam_layer attribute)"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, shape, layer, line", LAYER_CHOICES, ids=[f"{n}-{s[1]}px" for n, s, _, _ in LAYER_CHOICES]
)
def test_a_layer_whose_maps_are_too_small_gives_way_to_the_last_convolution_of_4x4_maps(
    caplog, name, shape, layer, line
):
    """torchvision's resnet18 at 32 px ends at 1x1 maps, ResNet9's layer3.res is 3x3 on 28 px images: GradCAM
    takes the last convolution (in the order they run) whose maps are at least 4x4, and says so in one line."""
    torch.manual_seed(0)
    if name == "resnet18":
        from torchvision.models import resnet18

        model = resnet18(num_classes=10)
    elif name == "strided":  # a user's model whose one convolution leaves 2x2 maps of an 8x8 image
        model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.Flatten(), nn.Linear(16, 10))
    else:
        model = ResNet9(width=0.125, in_channels=shape[0])
    model.train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with caplog.at_level("WARNING", logger="resnet9"):
        assert gradcam.target_layer(model, shape) == layer
    assert [record.getMessage() for record in caplog.records] == [line]
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    images = np.random.default_rng(0).integers(0, 256, size=(2, shape[1], shape[2], shape[0]), dtype=np.uint8)
    stats = augment.CIFAR10_STATS if shape[0] == 3 else ((0.5,), (0.25,))
    maps = gradcam.class_activation_maps(model, images, [1, 2], stats, layer)
    assert maps.shape == (2, shape[1], shape[2]) and 0 <= maps.min() and maps.max() <= 1 + 1e-6
    assert gradcam.overlays(images, maps).shape == (2, shape[1], shape[2], 3)  # grey images shown in grey


def test_a_models_own_gradcam_layer_is_kept_when_its_maps_are_large_enough(caplog):
    model = ResNet9(width=0.125)
    model.gradcam_layer = model.layer2
    with caplog.at_level("WARNING", logger="resnet9"):
        assert gradcam.target_layer(model, (3, 64, 64)) == "layer2"
    assert not caplog.records
