"""The exponential moving average of the weights (`ema.decay > 0`): torch's AveragedModel, counted on the host.

AveragedModel decides whether an update copies the weights (the first update) or averages them by reading its
step count from the device (`bool(n_averaged == 0)`, then `n_averaged > 0`): two waits for the GPU on every
training step. `WeightEMA` keeps the same count on the host as well, so an update only launches kernels. What
it computes and what it saves (`n_averaged` included) are AveragedModel's, with `use_buffers=True`: BatchNorm's
statistics are averaged too, so the average is ready to evaluate (tested equal, update for update).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightEMA(AveragedModel):
    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.updates = 0  # = n_averaged, read without waiting for the device

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [*model.parameters(), *model.buffers()]
        if self.updates == 0:
            for mine, theirs in zip(averaged, current, strict=True):
                mine.copy_(theirs)
        else:  # by dtype, as AveragedModel groups them (float weights and statistics; BatchNorm's integer counts)
            groups: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
            for mine, theirs in zip(averaged, current, strict=True):
                mines, theirs_list = groups.setdefault(mine.dtype, ([], []))
                mines.append(mine)
                theirs_list.append(theirs.detach())
            for mines, theirs_list in groups.values():
                self.multi_avg_fn(mines, theirs_list, self.n_averaged)
        self.n_averaged += 1
        self.updates += 1

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.updates = int(self.n_averaged)  # the one read, when a checkpoint is loaded
        return result
