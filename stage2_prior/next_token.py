"""The autoregressive priors' objective: teacher-forced next-code NLL, and val metrics in bits/token.

The loss is the mean negative log-likelihood (nats) of the code tokens under logits restricted to
the K codes, so `val/bits_per_token` is directly comparable with `val/unigram_bits`, the entropy of
the training codes' unigram distribution: what a model that ignores all context would need.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from einops import rearrange
from torch import Tensor

from stage2_prior.gpt import gpt_code_logits
from stage2_prior.vocab import PriorVocab

# (model, vocab, codes (B, h, w), class indices (B,) in [0, N]) -> logits (B, T, K), position t
# seeing only the codes before t.
CodeLogits = Callable[[torch.nn.Module, PriorVocab, Tensor, Tensor], Tensor]


def gpt_logits(model: torch.nn.Module, vocab: PriorVocab, codes: Tensor, index: Tensor) -> Tensor:
    return gpt_code_logits(model, codes, vocab.cond_token(index), vocab.codebook_size)


def pixelcnn_logits(model: torch.nn.Module, vocab: PriorVocab, codes: Tensor, index: Tensor) -> Tensor:
    return rearrange(model(codes, index).logits, "b h w k -> b (h w) k")


@dataclass(frozen=True)
class NextToken:
    """The objective (loss and val metrics) of an autoregressive prior with the given logits."""

    logits: CodeLogits
    # The report's rows (metric key, label) and its val curve (key, title).
    report_rows: ClassVar[tuple[tuple[str, str], ...]] = (
        ("val/bits_per_token", "val bits/token"), ("val/unigram_bits", "unigram baseline bits/token"),
        ("val/accuracy", "next-code accuracy"))
    curve: ClassVar[tuple[str, str]] = ("val/bits_per_token", "prior val bits/token")

    def loss(self, model: torch.nn.Module, vocab: PriorVocab, codes: Tensor, index: Tensor) -> dict[str, Tensor]:
        """codes (B, h, w), class indices (B,) -> {"loss": mean NLL (nats/token), "accuracy"}."""
        logits = self.logits(model, vocab, codes, index)
        targets = rearrange(codes, "b h w -> b (h w)")
        loss = F.cross_entropy(rearrange(logits, "b t k -> (b t) k"), targets.flatten())
        accuracy = (logits.argmax(-1) == targets).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}

    def evaluate(self, model: torch.nn.Module, vocab: PriorVocab, loader: Iterable[dict],
                 accelerator: Accelerator) -> dict[str, float]:
        nll, correct, tokens = 0.0, 0.0, 0
        for batch in loader:
            logits = self.logits(model, vocab, batch["codes"], vocab.class_index(batch["label"]))
            targets = rearrange(batch["codes"], "b h w -> b (h w)")
            per_sample = F.cross_entropy(rearrange(logits, "b t k -> b k t"), targets, reduction="none").sum(1)
            hits = (logits.argmax(-1) == targets).float().sum(1)
            per_sample, hits = accelerator.gather_for_metrics((per_sample, hits))
            nll += float(per_sample.double().sum())
            correct += float(hits.double().sum())
            tokens += per_sample.numel() * targets.shape[1]
        nll /= max(tokens, 1)
        return {"val/nll": nll, "val/bits_per_token": nll / math.log(2), "val/accuracy": correct / max(tokens, 1)}
