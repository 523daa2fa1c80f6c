"""The autoregressive priors' objective: teacher-forced next-code NLL, and val metrics in bits/token.

The loss is the mean negative log-likelihood (nats) of the code tokens under logits restricted to
the K codes, so `val/bits_per_token` is directly comparable with `val/unigram_bits`, the entropy of
the training codes' unigram distribution: what a model that ignores all context would need.

With two levels (a GPT over [cond, top codes, bottom codes]) each position's logits are restricted
to its own level's range: a top position is scored over the K_top top codes only, a bottom one
over the K_bottom bottom codes, since the level of every position is known in advance. The bits of
each level are then comparable with that level's own unigram entropy, and `val/top/...` and
`val/bottom/...` are logged beside the totals (the totals average over every token of both levels).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from einops import rearrange
from torch import Tensor

from stage2_prior.gpt import gpt_token_logits
from stage2_prior.vocab import Codes, PriorVocab, level_grids

# (model, vocab, codes (B, h, w) or {level: (B, h, w)}, class indices (B,) in [0, N]) -> logits
# (B, T, >= K) over the code tokens of the sequence, position t seeing only the codes before t.
CodeLogits = Callable[[torch.nn.Module, PriorVocab, Codes, Tensor], Tensor]


def gpt_logits(model: torch.nn.Module, vocab: PriorVocab, codes: Codes, index: Tensor) -> Tensor:
    return gpt_token_logits(model, vocab.tokens(codes), vocab.cond_token(index))


def pixelcnn_logits(model: torch.nn.Module, vocab: PriorVocab, codes: Codes, index: Tensor) -> Tensor:
    """The PixelCNN's logits per level (B, h, w, K_l), each level's placed in its vocabulary range of the
    sequence's logits (B, T, K), as the GPT's are; the other levels' codes get -inf (`by_level` keeps
    each level's range only). One level: its logits, as they are."""
    levels = zip(level_grids(model(codes, index).level_logits()).values(), vocab.level_ranges)
    return torch.cat([F.pad(rearrange(logits, "b h w k -> b (h w) k"), (span.start, vocab.codebook_size - span.stop),
                            value=float("-inf")) for logits, span in levels], dim=1)


def by_level(vocab: PriorVocab, logits: Tensor, codes: Codes) -> Iterator[tuple[str, Tensor, Tensor]]:
    """(level name, its logits (B, T_l, K_l) restricted to its range, its targets (B, T_l) in [0, K_l)),
    coarse to fine, from the sequence's logits (B, T, >= K)."""
    start = 0
    for (name, grid), span in zip(level_grids(codes).items(), vocab.level_ranges):
        targets = rearrange(grid, "b h w -> b (h w)")
        end = start + targets.shape[1]
        yield name, logits[:, start:end, span.start:span.stop], targets
        start = end


@dataclass
class LevelTotals:
    """Sums over the val set of one level's tokens."""

    nll: float = 0.0
    correct: float = 0.0
    tokens: int = 0

    def metrics(self, prefix: str) -> dict[str, float]:
        nll = self.nll / max(self.tokens, 1)
        return {f"{prefix}nll": nll, f"{prefix}bits_per_token": nll / math.log(2),
                f"{prefix}accuracy": self.correct / max(self.tokens, 1)}


@dataclass(frozen=True)
class NextToken:
    """The objective (loss and val metrics) of an autoregressive prior with the given logits."""

    logits: CodeLogits
    # The report's rows (metric key, label) and its val curve (key, title).
    report_rows: ClassVar[tuple[tuple[str, str], ...]] = (
        ("val/bits_per_token", "val bits/token"), ("val/unigram_bits", "unigram baseline bits/token"),
        ("val/accuracy", "next-code accuracy"))
    curve: ClassVar[tuple[str, str]] = ("val/bits_per_token", "prior val bits/token")

    def loss(self, model: torch.nn.Module, vocab: PriorVocab, codes: Codes, index: Tensor) -> dict[str, Tensor]:
        """codes (B, h, w) or {level: (B, h, w)}, class indices (B,) -> {"loss": mean NLL (nats/token)
        over every code token, "accuracy"}."""
        levels = list(by_level(vocab, self.logits(model, vocab, codes, index), codes))
        total = sum(targets.shape[1] for _, _, targets in levels)
        # Each level's mean weighted by its share of the tokens: the mean over all (one level: x 1.0, exact).
        loss = sum(F.cross_entropy(rearrange(logits, "b t k -> (b t) k"), targets.flatten()) * (targets.shape[1] / total)
                   for _, logits, targets in levels)
        hits = torch.cat([logits.argmax(-1) == targets for _, logits, targets in levels], dim=1)
        return {"loss": loss, "accuracy": hits.float().mean().detach()}

    def evaluate(self, model: torch.nn.Module, vocab: PriorVocab, loader: Iterable[dict],
                 accelerator: Accelerator) -> dict[str, float]:
        totals: dict[str, LevelTotals] = {}
        for batch in loader:
            logits = self.logits(model, vocab, batch["codes"], vocab.class_index(batch["label"]))
            for name, level_logits, targets in by_level(vocab, logits, batch["codes"]):
                per_sample = F.cross_entropy(rearrange(level_logits, "b t k -> b k t"), targets,
                                             reduction="none").sum(1)
                hits = (level_logits.argmax(-1) == targets).float().sum(1)
                per_sample, hits = accelerator.gather_for_metrics((per_sample, hits))
                level = totals.setdefault(name, LevelTotals())
                level.nll += float(per_sample.double().sum())
                level.correct += float(hits.double().sum())
                level.tokens += per_sample.numel() * targets.shape[1]
        overall = LevelTotals(sum(t.nll for t in totals.values()), sum(t.correct for t in totals.values()),
                              sum(t.tokens for t in totals.values()))
        per_level = {} if len(totals) < 2 else \
            {key: value for name, level in totals.items() for key, value in level.metrics(f"val/{name}/").items()}
        return {**overall.metrics("val/"), **per_level}
