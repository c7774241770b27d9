import torch

from resnet9.analysis.model_table import describe
from resnet9.models.resnet9 import ResNet9


def test_table_shows_layers_shapes_and_the_exact_parameter_count():
    table = describe(ResNet9())
    assert "Total params: 6,573,130" in table
    assert "[1, 512, 4, 4]" in table and "[1, 10]" in table  # layer3 output, logits
    assert table.count("Conv2d") == 8


def test_describing_leaves_the_model_untouched():
    model = ResNet9(width=0.125).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    describe(model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics included
    assert torch.equal(rng, torch.get_rng_state())


def test_cli_prints_the_configured_width(run_cli, tmp_path):
    result = run_cli("resnet9.summary", "model.width=0.5", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Total params: 1,646,122" in result.stdout  # about a quarter of the full network
