"""The priors vqgen knows: one entry per `prior.arch`, and the only place an arch name maps to code.

An entry supplies everything the rest of vqgen asks of a prior: how to build it from the run
settings, how to load its folder (the class and the config model types it may hold), its training
objective (loss, val metrics and how the report labels them). Its sampler is one line in
`sampling/samplers.py`, the layer above (stage 2 does not import sampling; a test checks that every
arch here has one). The CLI's `--arch` choices, `load_prior`, training, sampling, the pipeline's
checks and the report all read `PRIORS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
from accelerate import Accelerator
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedModel,
)

from core.errors import VqgenError
from stage2_prior.gpt import build_gpt
from stage2_prior.maskgit import build_maskgit, size_problem
from stage2_prior.masking import MaskedTokens
from stage2_prior.next_token import NextToken, gpt_logits, pixelcnn_logits
from stage2_prior.pixelcnn import PixelCNNConfig, PixelCNNPrior, build_pixelcnn
from stage2_prior.vocab import PriorVocab

if TYPE_CHECKING:
    from stage2_prior.train import PriorRunConfig


class Objective(Protocol):
    """A prior's training loss and val metrics (`stage2_prior.next_token`, `stage2_prior.masking`)."""

    report_rows: ClassVar[tuple[tuple[str, str], ...]]  # (metric key, label in report.md)
    curve: ClassVar[tuple[str, str]]  # (metric key, title) of the prior's val curve in curves.png

    def loss(self, model: torch.nn.Module, vocab: PriorVocab, codes: torch.Tensor,
             index: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def evaluate(self, model: torch.nn.Module, vocab: PriorVocab, loader: Iterable[dict],
                 accelerator: Accelerator) -> dict[str, float]: ...


# (run settings, vocabulary, grid h, grid w) -> a fresh model
Build = Callable[["PriorRunConfig", PriorVocab, int, int], PreTrainedModel]


@dataclass(frozen=True)
class PriorKind:
    build: Build
    loader: type  # its from_pretrained loads the folder
    model_types: tuple[str, ...]  # config.json model_type values of the folder
    # What is wrong with a loaded config that its own class does not check, or None.
    config_problem: Callable[[PreTrainedConfig], str | None]
    objective: Objective


def _gpt(cfg: PriorRunConfig, vocab: PriorVocab, grid_h: int, grid_w: int) -> PreTrainedModel:
    return build_gpt(cfg.preset, vocab.codebook_size, vocab.num_classes, grid_h, grid_w, family=cfg.family, **cfg.model)


def _pixelcnn(cfg: PriorRunConfig, vocab: PriorVocab, grid_h: int, grid_w: int) -> PreTrainedModel:
    return build_pixelcnn(cfg.preset, vocab.codebook_size, vocab.num_classes, grid_h, grid_w, **cfg.model)


def _maskgit(cfg: PriorRunConfig, vocab: PriorVocab, grid_h: int, grid_w: int) -> PreTrainedModel:
    return build_maskgit(cfg.preset, vocab.codebook_size, vocab.num_classes, grid_h, grid_w, **cfg.model)


def _checked_by_its_class(config: PreTrainedConfig) -> None:
    """Llama, GPT-2 and our PixelCNN configs refuse bad sizes themselves."""


def _bert_sizes(config: PreTrainedConfig) -> str | None:
    return size_problem(config.to_dict())


PRIORS: dict[str, PriorKind] = {
    "gpt": PriorKind(_gpt, AutoModelForCausalLM, (LlamaConfig.model_type, GPT2Config.model_type),
                     _checked_by_its_class, NextToken(gpt_logits)),
    "pixelcnn": PriorKind(_pixelcnn, PixelCNNPrior, (PixelCNNConfig.model_type,), _checked_by_its_class,
                          NextToken(pixelcnn_logits)),
    "maskgit": PriorKind(_maskgit, AutoModelForMaskedLM, (BertConfig.model_type,), _bert_sizes, MaskedTokens()),
}
ARCHS = tuple(PRIORS)


def prior_kind(arch: str, source: str = "prior.arch") -> PriorKind:
    """The registry entry of `arch`; an unknown name is one line naming `source` and listing the registry."""
    if arch not in PRIORS:
        raise VqgenError(f"{source}: unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return PRIORS[arch]
