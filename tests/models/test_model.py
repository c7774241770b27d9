import copy

import pytest
import torch
from torch import nn

from resnet9.models.resnet9 import GlobalMaxPool, ResNet9, count_parameters


def test_exact_network_has_6_573_130_parameters():
    assert count_parameters(ResNet9()) == 6_573_130


def test_layout_matches_the_mission():
    model = ResNet9()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (3, 64), (64, 128), (128, 128), (128, 128), (128, 256), (256, 512), (512, 512), (512, 512),
    ]  # fmt: skip
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1) for c in convs)
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3  # three 2x2; the head's: a global max
    assert isinstance(model.pool, GlobalMaxPool)
    assert (model.fc.in_features, model.fc.out_features) == (512, 10)


def test_maps_images_to_logits_and_probabilities():
    model = ResNet9(width=0.25).eval()
    x = torch.randn(5, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (5, 10)
    probs = model.predict_proba(x)
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-6)
    assert (probs >= 0).all()
    assert torch.equal(probs.argmax(1), logits.argmax(1))


def test_residual_layer_adds_its_branch():
    layer = ResNet9(width=0.125).layer1.eval()
    x = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        base = layer.conv(x)
        assert torch.allclose(layer(x), base + layer.res(base))


def test_width_scales_channels_and_rejects_nonsense():
    assert ResNet9(width=0.5).fc.in_features == 256
    assert count_parameters(ResNet9(width=0.5)) < count_parameters(ResNet9()) / 3
    with pytest.raises(ValueError, match="width"):
        ResNet9(width=0)


def test_channels_last_gives_the_same_result():
    torch.manual_seed(0)
    model = ResNet9(width=0.25).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(expected, got, atol=1e-4)


def test_training_flops_per_image_are_the_networks_known_count():
    """Forward 0.758 GFLOP per image, forward and backward 2.27 GFLOP (the basis of each epoch's MFU on a GPU)."""
    from resnet9.analysis.model_table import peak_flops, training_flops_per_image

    model = ResNet9()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert training_flops_per_image(model) == pytest.approx(2.27e9, rel=0.02)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model itself untouched
    assert peak_flops("NVIDIA H100 PCIe") == 756e12 and peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("Some Future GPU") is None


def page_network(model: ResNet9) -> ResNet9:
    """The same network with the head's pool as it was before any image size: MaxPool2d(4)."""
    before = copy.deepcopy(model)
    before.pool = nn.MaxPool2d(4)
    return before


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_global_pool_is_maxpool4_bit_for_bit_at_32px(layout, precision):
    """At 32 px the map before the head is 4x4, where the global max is MaxPool2d(4): the same kernel, so the
    logits and every gradient are equal bit for bit, ties included (rounded inputs and an all-ties map), in both
    layouts and under bf16 autocast; the state_dict keys (old checkpoints) are unchanged."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = ResNet9(width=0.25).to(memory_format=memory_format)
    before = page_network(model)
    assert list(model.state_dict()) == list(before.state_dict())
    x = torch.cat([torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32).round(), torch.zeros(2, 3, 32, 32)])
    results = []
    for network in (before, model):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = network(x.contiguous(memory_format=memory_format))
        logits.float().square().sum().backward()
        results.append([logits.detach(), *(p.grad for p in network.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    tied = torch.ones(2, 5, 4, 4, requires_grad=True)  # every window all ties: which one gets the gradient
    grads = [torch.autograd.grad(pool(tied).sum(), tied)[0] for pool in (nn.MaxPool2d(4), GlobalMaxPool())]
    assert torch.equal(*grads)


@pytest.mark.parametrize("shape", [(3, 64, 64), (3, 96, 96), (1, 28, 28), (3, 48, 64), (3, 8, 8)])
def test_any_image_size_and_grey_images_give_logits_with_the_same_parameters(shape):
    """The head pools the whole last map (8x8 at 64 px, 3x3 at 28 px): any size from 8 px on, and one input
    channel for grey images, with the network's parameters otherwise unchanged."""
    model = ResNet9(width=0.125, in_channels=shape[0]).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 10)
    assert count_parameters(ResNet9(width=0.125)) - count_parameters(model) == 9 * 8 * (3 - shape[0])
