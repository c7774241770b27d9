"""Networks: the mission's ResNet-9 (`resnet9.py`). A user's own nn.Module stands beside it through a YAML file
with its `_target_` (see examples/)."""
