"""What a stage hands to `fit`: its `TrainTask` (model, data, step, evaluation) and its `TrainConfig`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from torch.utils.data import Dataset

from vqgen.config import setting


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


class TrainTask(Protocol):
    """What a stage hands to `fit`."""

    model: torch.nn.Module
    train_set: Dataset
    val_set: Dataset | None
    run_config: dict

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]: ...

    def evaluate(self, model: torch.nn.Module, loader: Iterable, accelerator: Accelerator) -> dict[str, float]: ...

    def after_evaluate(self, model: torch.nn.Module, step: int, out_dir: Path, accelerator: Accelerator) -> None: ...

    def save_extras(self, model_dir: Path) -> None: ...
