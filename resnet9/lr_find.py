"""`python -m resnet9.lr_find [overrides]` (resnet9-lr-find): the LR range test alone for the composed config.

Runs (or reuses the cached curve of) the test resnet9.train runs itself when optimizer.lr or scheduler.lr_min is
auto (resnet9/training/lr/range_test.py), and prints LRMIN/LRMAX and every rule's LRMAX.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m resnet9.lr_find --version` (or --help): answered before torch is imported
    from resnet9.cli import answer_if_asked

    answer_if_asked("lr_find")

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from resnet9.core.errors import exit_on_usage_error, hydra_errors_in_one_line
from resnet9.training.config import schema
from resnet9.training.engine import build, distributed
from resnet9.training.lr.derive import JSON_NAME, PLOT_NAME, read_range


def main() -> None:
    """`python -m resnet9.lr_find [overrides]`: run (or reuse) the range test alone and print LRMIN/LRMAX."""
    distributed.register_resolvers()
    with hydra_errors_in_one_line():
        _hydra_main()


@hydra.main(version_base="1.3", config_path="conf", config_name="lr_find")
def _hydra_main(cfg: DictConfig) -> None:
    with exit_on_usage_error():
        schema.validate(cfg)
        device = build.device(cfg.device)
        build.seed_everything(cfg.seed, cfg.deterministic)
        settings = build.step_settings(cfg, device)
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        result = read_range(cfg, build.dataset(cfg.data), settings, out_dir, cfg.progress)
    source = "cached curve" if result.cached else "new test"
    print(f"LRMIN={result.lr_min:.4g} LRMAX={result.lr_max:.4g} ({source}; {result.reading})")
    print("every rule's LRMAX (lr_finder.rule=...): " + ", ".join(f"{k} {v:.3g}" for k, v in result.picks.items()))
    print(f"plot and numbers: {out_dir / PLOT_NAME}, {out_dir / JSON_NAME}")


if __name__ == "__main__":
    main()
