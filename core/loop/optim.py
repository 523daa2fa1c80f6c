"""The optimizer's pieces: which parameters decay, the learning-rate schedule, the steps under a loss
scaler, and the EMA of the weights."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch

from core.loop.task import OptimizerSettings


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear, conv, embedding weights) only; never norms, biases or gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def adamw(module: torch.nn.Module, settings: OptimizerSettings) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(module, settings.weight_decay), lr=settings.lr, betas=settings.betas)


def warmup_cosine(settings: OptimizerSettings, steps: int) -> Callable[[int], float]:
    """lr multiplier at optimizer step s of `steps`: linear warmup, then cosine to min_lr_ratio.

    Not transformers' get_cosine_with_min_lr_schedule_with_warmup: its warmup gives step s the multiplier
    s / warmup_steps, so the first step trains at lr 0, where ours gives (s + 1) / warmup_steps; shifting it
    one step would shift its cosine as well, so no setting of it gives today's values (pinned by a test).
    """
    warmup, floor = settings.warmup_steps, settings.min_lr_ratio

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def scaled_backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None, grad_accum: int) -> None:
    """`accelerator.backward` with a loss scaler of the caller's: the loss averaged over the micro-batches
    of a step, scaled (fp16), backpropagated."""
    loss = loss / grad_accum
    (scaler.scale(loss) if scaler is not None else loss).backward()


def unscale_and_clip(parameters: list[torch.Tensor], optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler | None, max_norm: float) -> torch.Tensor:
    """Clip the (unscaled) gradients of `parameters` to max_norm; their total norm before clipping."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def scaled_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """optimizer.step(), or under a scaler: skipped when a gradient is not finite, then the scale updated."""
    if scaler is None:
        optimizer.step()
        return
    scaler.step(optimizer)
    scaler.update()


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
