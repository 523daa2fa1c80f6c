"""The batches `fit` trains and evaluates on.

`TrainConfig.batch_size` is the GLOBAL batch: each process takes batch_size / (processes * grad_accum)
per micro-batch, so a 2-process run sees the same samples at each step as a 1-process run.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from core.errors import VqgenError
from core.loop.task import TrainConfig, TrainTask


class EpochSampler(Sampler[int]):
    """A permutation of the data set seeded by (seed, epoch): the same on every process, and
    reproducible after a resume (a RandomSampler draws from the global RNG instead)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def train_loader(task: TrainTask, cfg: TrainConfig, processes: int) -> DataLoader:
    """Each process's micro-batches, in the order of `EpochSampler`; not yet prepared."""
    micro_batch = _micro_batch(cfg, processes)
    sampler = EpochSampler(len(task.train_set), cfg.seed)
    loader = _loader(task.train_set, micro_batch, cfg, sampler=sampler, drop_last=True)
    if len(loader) == 0:
        raise VqgenError(f"train.batch_size={cfg.batch_size} is larger than the {len(task.train_set)} training items; lower it")
    return loader


def _micro_batch(cfg: TrainConfig, processes: int) -> int:
    per_step = processes * cfg.grad_accum
    if cfg.batch_size % per_step:
        raise VqgenError(
            f"train.batch_size={cfg.batch_size} is not divisible by processes*grad_accum={per_step}; "
            "choose a multiple"
        )
    return cfg.batch_size // per_step


def _loader(dataset: Dataset, batch: int, cfg: TrainConfig, sampler=None, drop_last: bool = False) -> DataLoader:
    # A generator of its own keeps the loader's worker seed off the global RNG, which resume restores.
    return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=drop_last,
                      num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))


def val_loader(task: TrainTask, cfg: TrainConfig, accelerator: Accelerator) -> DataLoader | None:
    """The prepared val loader, cut to `eval_batches`; None without a val set."""
    if task.val_set is None or len(task.val_set) == 0:
        return None
    per_process = max(1, cfg.batch_size // accelerator.num_processes)
    val_set = task.val_set
    if cfg.eval_batches > 0:
        # A shorter data set, not a loop that stops early: a prepared loader left unfinished stays
        # registered with Accelerate's GradientState, and gather_for_metrics reads the wrong loader.
        n = min(len(val_set), cfg.eval_batches * per_process * accelerator.num_processes)
        val_set = Subset(val_set, range(n))
    return accelerator.prepare(_loader(val_set, per_process, cfg))


def endless(loader: DataLoader, accelerator: Accelerator, start: int) -> Iterator[dict]:
    """Micro-batches forever, epoch after epoch, beginning after the first `start` of them."""
    epoch, skip = divmod(start, len(loader))
    while True:
        # The prepared loader owns the epoch counter and hands it to our sampler on every pass;
        # a skipping copy of it would start counting from its own copy, so set it here.
        loader.set_epoch(epoch)
        yield from accelerator.skip_first_batches(loader, skip) if skip else loader
        epoch, skip = epoch + 1, 0
