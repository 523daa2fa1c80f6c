"""The optimizer's pieces: which parameters decay, the learning-rate schedule, and the EMA of the weights."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch

from vqgen.loop.task import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear, conv, embedding weights) only; never norms, biases or gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def warmup_cosine(cfg: TrainConfig) -> Callable[[int], float]:
    """lr multiplier at optimizer step s: linear warmup, then cosine to min_lr_ratio.

    Not transformers' get_cosine_with_min_lr_schedule_with_warmup: its warmup gives step s the multiplier
    s / warmup_steps, so the first step trains at lr 0, where ours gives (s + 1) / warmup_steps; shifting it
    one step would shift its cosine as well, so no setting of it gives today's values (pinned by a test).
    """

    def multiplier(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


class WeightEMA:
    """Exponential moving average of the parameters; buffers (codebooks, counters) follow the live model.

    torch's AveragedModel either freezes buffers or averages all of them, integer counters included,
    and the quantizer's buffers need neither.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        ema_params = list(self.model.parameters())
        live_params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, live_params, 1.0 - self.decay)
        for ema_buf, live_buf in zip(self.model.buffers(), model.buffers()):
            ema_buf.copy_(live_buf)
