"""Training a prior on dumped code grids, through the shared loop (`core.loop.fit`).

    path = train_prior(PriorRunConfig(codes="runs/demo/codes", preset="demo"), "runs/demo/prior")

The grids are read memory-mapped through `core.code_grids`, never loaded whole. The model, its
loss and its val metrics come from the arch's registry entry (`stage2_prior.registry`): next-code
NLL for the autoregressive priors (`stage2_prior.next_token`), masked-code NLL for MaskGIT
(`stage2_prior.masking`). Every arch also logs `val/unigram_bits`, the entropy of the training
codes' unigram distribution: what a model that ignores all context would need.

A two-level folder (VQ-VAE-2's top and bottom grids) trains one GPT over [cond, top, bottom]
(`stage2_prior.vocab`); it logs each level's bits (`val/top/...`, `val/bottom/...`) beside the
totals, whose unigram baseline is the token-weighted mean of the levels' own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedModel

from core.code_grids import META_FILE, GridLevel, load_codes, read_meta
from core.config import setting
from core.distributed import process_state
from core.errors import VqgenError
from core.loop import TrainConfig, fit
from stage2_prior.load import PriorMeta, write_prior_meta
from stage2_prior.registry import ARCHS, check_levels, prior_kind
from stage2_prior.vocab import PriorVocab, level_grids


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
    """A fresh one-level prior over grid_h x grid_w grids of the vocabulary's K codes."""
    return build_prior_levels(cfg, vocab, [GridLevel("codes", grid_h, grid_w, vocab.codebook_size)])


def build_prior_levels(cfg: PriorRunConfig, vocab: PriorVocab, levels: Sequence[GridLevel]) -> PreTrainedModel:
    """A fresh prior over the code grids' levels (coarse to fine)."""
    return prior_kind(cfg.arch).build(cfg, vocab, levels)


def _entropy_bits(counts: torch.Tensor) -> float:
    p = counts / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


@dataclass
class CodeCounts:
    """One streamed pass over the training grids."""

    counts: torch.Tensor  # (K,) float64 occurrences of each code token (levels one after the other)
    max_label: int
    vocab: PriorVocab  # its level ranges split `counts`

    @property
    def level_bits(self) -> list[float]:
        """Each level's unigram entropy (bits), coarse to fine."""
        return [_entropy_bits(self.counts[span.start:span.stop]) for span in self.vocab.level_ranges]

    @property
    def unigram_bits(self) -> float:
        """The entropy per token of a model that knows each token's level but no context: the levels'
        entropies weighted by their share of the tokens (one level: its entropy)."""
        shares = [self.counts[span.start:span.stop].sum() / self.counts.sum() for span in self.vocab.level_ranges]
        return sum(float(share) * bits for share, bits in zip(shares, self.level_bits))


def count_codes(dataset: Dataset, sizes: int | Sequence[int], batch_size: int = 1024, source: str = "codes") -> CodeCounts:
    """Code counts and the largest label, streamed batch by batch (never the whole split in memory).
    sizes: K, or each level's K coarse to fine for items whose "codes" are {level: grid}."""
    vocab = PriorVocab.of_levels([sizes] if isinstance(sizes, int) else sizes, 0)
    counts = torch.zeros(vocab.codebook_size, dtype=torch.float64)
    max_label = -1
    # A generator of its own: a loader draws its base seed from the global RNG otherwise, and the
    # seeded model initialisation that follows must not depend on how many splits were counted.
    for batch in DataLoader(dataset, batch_size=batch_size, generator=torch.Generator()):
        grids = level_grids(batch["codes"])
        for (name, codes), k in zip(grids.items(), vocab.level_sizes):
            if codes.numel() and (codes.min() < 0 or codes.max() >= k):
                what = "stored codes" if len(grids) == 1 else f"level {name}'s stored codes"
                raise VqgenError(
                    f"{source}: {what} reach {int(codes.max())}, outside codebook_size={k}; "
                    "the metadata belongs to another tokenizer, re-run `vqgen dump-codes`"
                )
        counts += torch.bincount(vocab.tokens(grids).flatten(), minlength=vocab.codebook_size).double()
        max_label = max(max_label, int(batch["label"].max()))
    return CodeCounts(counts, max_label, vocab)


class LevelCodes(Dataset):
    """A two-level split whose items hold {"codes": {"top": grid, "bottom": grid}, "label"}: the
    objectives take one "codes" entry, a grid or a dict of levels (`stage2_prior.vocab.Codes`)."""

    def __init__(self, dataset: Dataset, names: Sequence[str]):
        self.dataset, self.names = dataset, list(names)

    def __len__(self) -> int:
        return len(self.dataset)

    def _item(self, item: dict) -> dict:
        return {"codes": {name: item[name] for name in self.names}, "label": item["label"]}

    def __getitem__(self, i: int) -> dict:
        return self._item(self.dataset[i])

    def __getitems__(self, indices: list[int]) -> list[dict]:
        return [self._item(item) for item in self.dataset.__getitems__(indices)]


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
        source = str(Path(cfg.codes) / META_FILE)
        check_levels(cfg.arch, meta.levels, source)
        self.codes_meta = dataclasses.asdict(meta)
        self.levels = meta.levels
        sizes = [lv.codebook_size for lv in meta.levels]
        self.vocab = PriorVocab.of_levels(sizes, meta.num_classes)
        self.train_set = self._split(cfg.codes, "train")
        self.val_set = Rows(self._split(cfg.codes, "val")) if meta.splits.get("val", 0) > 0 else None
        self.stats = count_codes(self.train_set, sizes, source=source)
        _check_labels(cfg.codes, "train", self.stats.max_label, meta.num_classes)
        if self.val_set is not None:
            # Val labels too: N would silently become the unconditional token, more an IndexError.
            val_stats = count_codes(self.val_set, sizes, source=source)
            _check_labels(cfg.codes, "val", val_stats.max_label, meta.num_classes)
        self.model = build_prior_levels(cfg, self.vocab, meta.levels)
        self.run_config = {"stage": "prior", **dataclasses.asdict(cfg)}

    def _split(self, codes_dir: str, split: str) -> Dataset:
        """A split whose items carry one "codes" entry: the grid, or for two levels {level: grid}."""
        grids = load_codes(codes_dir, split)
        return grids if len(self.levels) == 1 else LevelCodes(grids, [lv.name for lv in self.levels])

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        state = process_state()
        index = self.vocab.class_index(batch["label"])
        index = self.vocab.drop_labels(index, self.cfg.label_dropout, state.process_index, state.num_processes)
        return self.objective.loss(model, self.vocab, batch["codes"], index)

    def evaluate(self, model: torch.nn.Module, loader, accelerator) -> dict[str, float]:
        metrics = self.objective.evaluate(model, self.vocab, loader, accelerator)
        per_level = {} if len(self.levels) == 1 else \
            {f"val/{lv.name}/unigram_bits": bits for lv, bits in zip(self.levels, self.stats.level_bits)}
        return {**metrics, "val/unigram_bits": self.stats.unigram_bits, **per_level}

    def after_evaluate(self, model, step: int, out_dir: Path, accelerator) -> None:
        """Nothing to draw here: `vqgen sample` decodes grids with the tokenizer."""

    def save_extras(self, model_dir: Path) -> None:
        meta = self.codes_meta
        # One level: K, h, w at the top level as before; two: null there, `levels` lists them (as vqgen_codes.json).
        prior_meta = PriorMeta(
            arch=self.cfg.arch, codebook_size=meta["codebook_size"], grid_h=meta["grid_h"], grid_w=meta["grid_w"],
            num_classes=self.vocab.num_classes, uncond_token=self.vocab.uncond_token,
            tokenizer_sha256=meta["tokenizer_sha256"], codes_meta=meta, levels=meta["levels"],
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
