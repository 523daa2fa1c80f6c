"""Training a prior on dumped code grids, through the shared loop (`core.loop.fit`).

    path = train_prior(PriorRunConfig(codes="runs/demo/codes", preset="demo"), "runs/demo/prior")

The grids are read memory-mapped through `core.code_grids`, never loaded whole. The model, its
loss and its val metrics come from the arch's registry entry (`stage2_prior.registry`): next-code
NLL for the autoregressive priors (`stage2_prior.next_token`), masked-code NLL for MaskGIT
(`stage2_prior.masking`). Every arch also logs `val/unigram_bits`, the entropy of the training
codes' unigram distribution: what a model that ignores all context would need.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedModel

from core.code_grids import load_codes, one_level, read_meta
from core.config import setting
from core.distributed import process_state
from core.errors import VqgenError
from core.loop import TrainConfig, fit
from stage2_prior.load import PriorMeta, write_prior_meta
from stage2_prior.registry import ARCHS, prior_kind
from stage2_prior.vocab import PriorVocab


def prior_train_defaults() -> TrainConfig:
    # GPT-style recipe (nanoGPT, LlamaGen): AdamW(0.9, 0.95), decay 0.1 on matrices, warmup + cosine.
    return TrainConfig(steps=2000, batch_size=64, lr=3e-4, warmup_steps=100, weight_decay=0.1, grad_clip=1.0)


@dataclass
class PriorRunConfig:
    codes: str = setting("", "a folder written by `vqgen dump-codes` (required)")
    arch: str = setting("gpt", "prior architecture", choices=ARCHS)
    preset: str = setting("small", "model size: demo | tiny | small | base | large")
    family: str = setting("llama", "gpt only: the transformers model family", choices=("llama", "gpt2"))
    model: dict = setting({}, "config overrides, checked against the config class")
    label_dropout: float = setting(0.1, "p of training on the unconditional token (classifier-free guidance)",
                                   ge=0, lt=1)
    train: TrainConfig = field(default_factory=prior_train_defaults)


def build_prior(cfg: PriorRunConfig, vocab: PriorVocab, grid_h: int, grid_w: int) -> PreTrainedModel:
    return prior_kind(cfg.arch).build(cfg, vocab, grid_h, grid_w)


@dataclass
class CodeCounts:
    """One streamed pass over the training grids."""

    counts: torch.Tensor  # (K,) float64 occurrences of each code
    max_label: int

    @property
    def unigram_bits(self) -> float:
        p = self.counts / self.counts.sum()
        p = p[p > 0]
        return float(-(p * p.log2()).sum())


def count_codes(dataset: Dataset, codebook_size: int, batch_size: int = 1024, source: str = "codes") -> CodeCounts:
    """Code counts and the largest label, streamed batch by batch (never the whole split in memory)."""
    counts = torch.zeros(codebook_size, dtype=torch.float64)
    max_label = -1
    # A generator of its own: a loader draws its base seed from the global RNG otherwise, and the
    # seeded model initialisation that follows must not depend on how many splits were counted.
    for batch in DataLoader(dataset, batch_size=batch_size, generator=torch.Generator()):
        codes = batch["codes"]
        if codes.numel() and (codes.min() < 0 or codes.max() >= codebook_size):
            raise VqgenError(
                f"{source}: stored codes reach {int(codes.max())}, outside codebook_size={codebook_size}; "
                "the metadata belongs to another tokenizer, re-run `vqgen dump-codes`"
            )
        counts += torch.bincount(codes.flatten(), minlength=codebook_size).double()
        max_label = max(max_label, int(batch["label"].max()))
    return CodeCounts(counts, max_label)


class Rows(Dataset):
    """A data set whose items also carry their row ("row": int): a masked prior's val masks are
    seeded by it, so an item is masked alike at every evaluation, on any number of processes."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "row": i}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        items = self.dataset.__getitems__(indices)  # the batched read of CodeGrids
        return [{**item, "row": i} for i, item in zip(indices, items)]


class PriorTask:
    """The prior's `TrainTask` for `core.loop.fit`."""

    def __init__(self, cfg: PriorRunConfig):
        self.cfg = cfg
        self.objective = prior_kind(cfg.arch).objective
        meta = read_meta(cfg.codes)
        one_level(meta, cfg.codes, "this version's priors take one level (two-level priors are not in this "
                  "version yet); dump codes with a one-level tokenizer (model.levels=1) to train a prior")
        self.codes_meta = dataclasses.asdict(meta)
        self.vocab = PriorVocab(meta.codebook_size, meta.num_classes)
        self.train_set = load_codes(cfg.codes, "train")
        self.val_set = Rows(load_codes(cfg.codes, "val")) if meta.splits.get("val", 0) > 0 else None
        source = str(Path(cfg.codes) / "vqgen_codes.json")
        self.stats = count_codes(self.train_set, meta.codebook_size, source=source)
        _check_labels(cfg.codes, "train", self.stats.max_label, meta.num_classes)
        if self.val_set is not None:
            # Val labels too: N would silently become the unconditional token, more an IndexError.
            val_stats = count_codes(self.val_set, meta.codebook_size, source=source)
            _check_labels(cfg.codes, "val", val_stats.max_label, meta.num_classes)
        self.model = build_prior(cfg, self.vocab, meta.grid_h, meta.grid_w)
        self.run_config = {"stage": "prior", **dataclasses.asdict(cfg)}

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        state = process_state()
        index = self.vocab.class_index(batch["label"])
        index = self.vocab.drop_labels(index, self.cfg.label_dropout, state.process_index, state.num_processes)
        return self.objective.loss(model, self.vocab, batch["codes"], index)

    def evaluate(self, model: torch.nn.Module, loader, accelerator) -> dict[str, float]:
        metrics = self.objective.evaluate(model, self.vocab, loader, accelerator)
        return {**metrics, "val/unigram_bits": self.stats.unigram_bits}

    def after_evaluate(self, model, step: int, out_dir: Path, accelerator) -> None:
        """Nothing to draw here: `vqgen sample` decodes grids with the tokenizer."""

    def save_extras(self, model_dir: Path) -> None:
        meta = self.codes_meta
        prior_meta = PriorMeta(
            arch=self.cfg.arch, codebook_size=self.vocab.codebook_size, grid_h=meta["grid_h"], grid_w=meta["grid_w"],
            num_classes=self.vocab.num_classes, uncond_token=self.vocab.uncond_token,
            tokenizer_sha256=meta["tokenizer_sha256"], codes_meta=meta,
        )
        write_prior_meta(model_dir, prior_meta)


def _check_labels(codes_dir: str, split: str, max_label: int, num_classes: int) -> None:
    # Unlabelled val rows (-1) are scored unconditionally; unlabelled training rows under N > 0 mean
    # the metadata and the data disagree.
    unlabelled = split == "train" and num_classes > 0 and max_label < 0
    if max_label >= num_classes or unlabelled:
        raise VqgenError(
            f"{Path(codes_dir) / split}: the label field reaches {max_label} but num_classes is {num_classes} in "
            f"{Path(codes_dir) / 'vqgen_codes.json'}; re-dump the codes (vqgen dump-codes) so metadata and data agree"
        )


def train_prior(cfg: PriorRunConfig, out: str | Path, resume: bool = False) -> Path:
    """Train a prior on `cfg.codes`; returns OUT/model (save_pretrained files + vqgen_prior.json)."""
    prior_kind(cfg.arch)  # an unknown arch: one line listing the registry, before any work
    if not 0.0 <= cfg.label_dropout < 1.0:
        raise VqgenError(f"prior.label_dropout: {cfg.label_dropout} must be in [0, 1); 0.1 is the usual value")
    set_seed(cfg.train.seed)  # before the model is built, so the seed fixes its initialisation
    return fit(PriorTask(cfg), cfg.train, out, resume=resume)
