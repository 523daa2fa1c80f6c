"""What a stage hands to `fit`: its `TrainTask` (model, data, step, evaluation) and its `TrainConfig`.

A task trains `task.model` by one AdamW. A task that trains other networks beside it (Stage 1's
discriminator) also declares them in `networks`, each with an optimizer of its own; its
`training_step` then takes a third argument, the `StepInfo` (the global step and the prepared networks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from torch.utils.data import Dataset

from core.config import setting
from core.loop.tracking import TRACKERS, check_installed


@dataclass
class TrainConfig:
    steps: int = setting(2000, "optimizer steps", ge=1)
    batch_size: int = setting(64, "global batch, over all processes and accumulation steps", ge=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", ge=1)
    lr: float = setting(3e-4, "peak learning rate", gt=0, le=10)  # 1e39 overflows float32 inside AdamW
    min_lr_ratio: float = setting(0.1, "cosine decays to lr * min_lr_ratio", ge=0, le=1)
    warmup_steps: int = setting(100, "linear warmup steps", ge=0, le=10**9)
    weight_decay: float = setting(0.0, "applied to matrices only (params with ndim >= 2)", ge=0)
    betas: tuple[float, float] = setting((0.9, 0.95), "AdamW betas", length=2, ge=0, lt=1)
    grad_clip: float = setting(1.0, "max gradient norm; 0 turns clipping off", ge=0)
    ema_decay: float = setting(0.0, "decay of the EMA of weights; 0 turns it off", ge=0, lt=1)
    mixed_precision: str = setting("no", "autocast precision", choices=("no", "fp16", "bf16"))
    eval_every: int = setting(500, "steps between evaluations", ge=1)
    save_every: int = setting(500, "steps between checkpoints", ge=1)
    keep_checkpoints: int = setting(2, "newest checkpoints kept", ge=1)
    log_every: int = setting(10, "steps between metrics lines", ge=1)
    seed: int = setting(0, "seeds the initial weights and the data order", ge=0, le=2**32 - 1)
    num_workers: int = setting(0, "data loader worker processes", ge=0)
    eval_batches: int = setting(0, "val batches per evaluation; 0: the whole val set", ge=0)
    log_with: list[str] = setting([], "experiment trackers (Accelerate's) logged to beside metrics.jsonl, "
                                  "e.g. [tensorboard]; their files go to OUT/trackers", choices=TRACKERS)

    def __post_init__(self) -> None:
        # Refused as the settings are read, before any data is opened: a tracker whose package is missing.
        check_installed(self.log_with)

    def optimizer(self) -> OptimizerSettings:
        """The settings of the optimizer of `task.model`."""
        return OptimizerSettings(self.lr, self.betas, self.weight_decay, self.warmup_steps, self.min_lr_ratio)


@dataclass(frozen=True)
class OptimizerSettings:
    """One network's AdamW and its schedule: linear warmup over `warmup_steps`, then cosine decay to
    lr * min_lr_ratio at the run's last step (warmup_steps=0 and min_lr_ratio=1: a constant lr)."""

    lr: float
    betas: tuple[float, float]
    weight_decay: float = 0.0  # on matrices only (core.loop.optim.param_groups)
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0


@dataclass
class Network:
    """A network a task trains beside `task.model`, by an optimizer of its own.

    The loop prepares it with Accelerate, accumulates, clips and steps it as it does the model (its own
    loss scaler under fp16) and keeps it, its optimizer and its schedule in every checkpoint; it never
    averages it (EMA) and never saves it with save_pretrained.
    """

    name: str  # its checkpoint files (<name>.safetensors) and metrics (train/<name>_grad_norm)
    module: torch.nn.Module
    optimizer: OptimizerSettings
    loss: str  # the key of training_step's result it minimises; absent on a step: no update on that step


@dataclass(frozen=True)
class StepInfo:
    """What `training_step` of a task with `networks` learns of the run beside its batch."""

    step: int  # optimizer steps done before this one: 0 on the first; the same on every micro-batch of a step
    networks: dict[str, torch.nn.Module] = field(default_factory=dict)  # prepared (e.g. DDP-wrapped), by name


class TrainTask(Protocol):
    """What a stage hands to `fit`."""

    model: torch.nn.Module
    train_set: Dataset
    val_set: Dataset | None
    run_config: dict

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]: ...

    def evaluate(self, model: torch.nn.Module, loader: Iterable, accelerator: Accelerator) -> dict[str, float]: ...

    def after_evaluate(self, model: torch.nn.Module, step: int, out_dir: Path,
                       accelerator: Accelerator) -> dict[str, Path] | None:
        """Main process only, after each evaluation: write what the run shows of the model (pictures);
        return the PNGs the trackers should show too, by name (None: none)."""

    def save_extras(self, model_dir: Path) -> None: ...


class MultiNetworkTask(TrainTask, Protocol):
    """A `TrainTask` that trains `networks` beside `model` (the list may be empty): its training_step
    returns the loss of each network under that network's `loss` key, beside "loss" for `model`.

    A network's loss must not reach another network's parameters: detach what crosses (a GAN's fakes for
    the discriminator; the discriminator's parameters, when the generator's loss goes through it).
    """

    networks: list[Network]

    def training_step(self, model: torch.nn.Module, batch: dict, info: StepInfo) -> dict[str, torch.Tensor]: ...
