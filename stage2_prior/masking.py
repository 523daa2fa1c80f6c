"""MaskGIT's objective: masked-code prediction (Chang et al. 2022, sec. 3.2), and its val metrics.

Training: each grid draws u ~ U(0, 1) and masks ceil(cos(pi/2 * u) * T) of its T codes (at least
one), at uniformly random positions; the loss is the cross-entropy of the masked codes only.

Val: the NLL and top-1 accuracy of the masked codes at fixed mask ratios (0.5, 0.9), with the
positions fixed per val item (seeded by its row), so evaluations compare across steps and runs.
These are *not* bits/token of an autoregressive prior: a masked code is predicted from every
unmasked code on both sides of it, which makes the task easier at 0.5 than at 0.9 and the numbers
incomparable with `val/bits_per_token`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from einops import rearrange
from torch import Tensor

from core.distributed import process_state
from stage2_prior.maskgit import mask_token, maskgit_logits
from stage2_prior.vocab import PriorVocab

VAL_RATIOS = (0.5, 0.9)


def cosine_mask_ratio(u: Tensor) -> Tensor:
    """The paper's cosine schedule gamma(u) = cos(pi/2 * u): u in [0, 1] -> mask ratio in [0, 1]."""
    return torch.cos(math.pi / 2 * u)


def lowest(scores: Tensor, counts: Tensor) -> Tensor:
    """scores (B, T), counts (B,) -> mask (B, T) of the counts[b] lowest-scoring positions of row b."""
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]


def training_mask(batch: int, num_tokens: int, rank: int = 0, world: int = 1) -> Tensor:
    """Random masks (B, T) for one micro-batch, ceil(gamma(u) T) >= 1 positions each.

    The draws come from the global CPU RNG, which Accelerate checkpoints, so a resumed run masks as
    an uninterrupted one; every process draws for the whole global micro-batch and keeps its slice
    (as `PriorVocab.drop_labels` does), so 2 processes mask what 1 process masks.
    """
    rows = slice(rank * batch, (rank + 1) * batch)
    u = torch.rand(batch * world)[rows]
    scores = torch.rand(batch * world, num_tokens)[rows]
    counts = torch.ceil(cosine_mask_ratio(u) * num_tokens).long().clamp(1, num_tokens)
    return lowest(scores, counts)


def val_masks(rows: Tensor, num_tokens: int, ratios: Iterable[float]) -> dict[float, Tensor]:
    """Masks (B, T) per ratio of the val items at `rows` (B,): ceil(ratio T) positions each, drawn
    from a generator seeded by the row, nested (a higher ratio masks a superset)."""
    scores = torch.stack([torch.rand(num_tokens, generator=torch.Generator().manual_seed(int(r))) for r in rows])
    return {ratio: lowest(scores, torch.full((len(rows),), max(1, math.ceil(ratio * num_tokens)))) for ratio in ratios}


class MaskedScores(NamedTuple):
    nll: Tensor  # (B,) summed NLL (nats) of each grid's masked codes
    hits: Tensor  # (B,) masked codes predicted right (top-1)
    count: Tensor  # (B,) masked codes


def masked_scores(model: torch.nn.Module, vocab: PriorVocab, codes: Tensor, index: Tensor, mask: Tensor) -> MaskedScores:
    """codes (B, h, w), class indices (B,), mask (B, T) bool -> per-grid scores of the masked codes."""
    mask = mask.to(codes.device)
    targets = rearrange(codes, "b h w -> b (h w)")
    tokens = torch.where(mask, mask_token(vocab), targets).reshape(codes.shape)
    logits = maskgit_logits(model, tokens, vocab.cond_token(index), vocab.codebook_size)
    nll = F.cross_entropy(rearrange(logits, "b t k -> b k t"), targets, reduction="none")
    hits = (logits.argmax(-1) == targets).float()
    return MaskedScores((nll * mask).sum(1), (hits * mask).sum(1), mask.sum(1).float())


def ratio_key(name: str, ratio: float) -> str:
    return f"val/masked_{name}@{ratio:g}"


class MaskedTokens:
    """The objective (loss and val metrics) of a masked-token prior."""

    ratios = VAL_RATIOS
    report_rows: ClassVar[tuple[tuple[str, str], ...]] = (
        *((ratio_key("nll", r), f"val masked-code NLL, {r:.0%} masked (nats; not bits/token)") for r in VAL_RATIOS),
        *((ratio_key("accuracy", r), f"masked-code accuracy, {r:.0%} masked") for r in VAL_RATIOS),
        ("val/unigram_bits", "unigram baseline bits/token"))
    curve: ClassVar[tuple[str, str]] = (ratio_key("nll", 0.9), "prior val masked NLL @0.9 (nats)")

    def loss(self, model: torch.nn.Module, vocab: PriorVocab, codes: Tensor, index: Tensor) -> dict[str, Tensor]:
        """codes (B, h, w), class indices (B,) -> {"loss": NLL (nats) per masked code, "accuracy"}."""
        state = process_state()
        mask = training_mask(codes.shape[0], codes.shape[1] * codes.shape[2], state.process_index, state.num_processes)
        scores = masked_scores(model, vocab, codes, index, mask)
        # Each grid's mean, then the mean over grids: the same number however the global batch is
        # split between processes (a mean over all masked codes would weigh the shards unequally).
        loss = (scores.nll / scores.count).mean()
        return {"loss": loss, "accuracy": (scores.hits / scores.count).mean().detach()}

    def evaluate(self, model: torch.nn.Module, vocab: PriorVocab, loader: Iterable[dict],
                 accelerator: Accelerator) -> dict[str, float]:
        """Needs each batch's "row" (the val items' indices; `stage2_prior.train.Rows`)."""
        sums = {ratio: torch.zeros(3, dtype=torch.float64) for ratio in self.ratios}
        for batch in loader:
            codes, index = batch["codes"], vocab.class_index(batch["label"])
            num_tokens = codes.shape[1] * codes.shape[2]
            for ratio, mask in val_masks(batch["row"], num_tokens, self.ratios).items():
                scores = accelerator.gather_for_metrics(tuple(masked_scores(model, vocab, codes, index, mask)))
                sums[ratio] += torch.stack([s.double().sum().cpu() for s in scores])
        results = {}
        for ratio, total in sums.items():
            nll, hits, count = total.tolist()
            results[ratio_key("nll", ratio)] = nll / max(count, 1)
            results[ratio_key("accuracy", ratio)] = hits / max(count, 1)
        return results
