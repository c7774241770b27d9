"""The model summary: a torchinfo table of layers, output shapes and parameters.

    python -m resnet9.summary                 # the configured model (6,573,130 parameters at width 1.0)
    python -m resnet9.summary model.width=0.25

The output sizes are for the data option's images (`data.image_size`, `data.channels`: CIFAR's 32x32 RGB by
default). Every training run also saves it as `model_summary.txt` in its output folder.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m resnet9.summary --version` (or --help): answered before torch is imported
    from resnet9.cli import answer_if_asked

    answer_if_asked("summary")

import hydra
from omegaconf import DictConfig

from resnet9.analysis.model_table import describe
from resnet9.core.errors import exit_on_usage_error, hydra_errors_in_one_line
from resnet9.training.config import schema
from resnet9.training.engine import build, distributed


def main() -> None:
    """`python -m resnet9.summary [model.width=...]`: the torchinfo table of the configured model."""
    distributed.register_resolvers()
    with hydra_errors_in_one_line():
        _hydra_main()


@hydra.main(version_base="1.3", config_path="conf", config_name="summary")
def _hydra_main(cfg: DictConfig) -> None:
    with exit_on_usage_error():
        schema.validate(cfg)
        height, width, channels = build.stated_shape(cfg.data)
        print(describe(build.built(cfg.model, "model"), (channels, height, width)))


if __name__ == "__main__":
    main()
