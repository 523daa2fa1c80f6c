"""The priors vqgen knows: one entry per `prior.arch`, and the only place an arch name maps to code.

An entry supplies everything the rest of vqgen asks of a prior: how to build it from the run
settings, how to load its folder (the class and the config model types it may hold, and whether a
loaded config fits the codes the folder's vqgen_prior.json describes), its training
objective (loss, val metrics and how the report labels them). Its sampler is one line in
`sampling/samplers.py`, the layer above (stage 2 does not import sampling; a test checks that every
arch here has one). The CLI's `--arch` choices, `load_prior`, training, sampling, the pipeline's
checks and the report all read `PRIORS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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

from core.code_grids import GridLevel, describe_levels
from core.errors import VqgenError
from stage2_prior.gpt import build_gpt_tokens
from stage2_prior.maskgit import build_maskgit, mask_token, size_problem
from stage2_prior.masking import MaskedTokens
from stage2_prior.next_token import NextToken, gpt_logits, pixelcnn_logits
from stage2_prior.pixelcnn import PixelCNNConfig, PixelCNNPrior, build_pixelcnn, code_settings
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


# (run settings, vocabulary, the code grids' levels coarse to fine) -> a fresh model
Build = Callable[["PriorRunConfig", PriorVocab, Sequence[GridLevel]], PreTrainedModel]
# (loaded config, the levels coarse to fine and the vocabulary of vqgen_prior.json) -> what of the
# config does not fit those codes, or None. It checks what `build` derives from the codes, as `build`
# does: a size an override may raise (a vocabulary, a sequence) only against its minimum.
Fits = Callable[[PreTrainedConfig, Sequence[GridLevel], PriorVocab], str | None]


@dataclass(frozen=True)
class PriorKind:
    build: Build
    loader: type  # its from_pretrained loads the folder
    model_types: tuple[str, ...]  # config.json model_type values of the folder
    # What is wrong with a loaded config that its own class does not check, or None.
    config_problem: Callable[[PreTrainedConfig], str | None]
    fit_problem: Fits
    objective: Objective
    max_levels: int  # 2: one model draws both levels of a two-level folder; 1: one level only


def _gpt(cfg: PriorRunConfig, vocab: PriorVocab, levels: Sequence[GridLevel]) -> PreTrainedModel:
    return build_gpt_tokens(cfg.preset, vocab, sum(lv.grid_h * lv.grid_w for lv in levels), cfg.family, cfg.model)


def _pixelcnn(cfg: PriorRunConfig, vocab: PriorVocab, levels: Sequence[GridLevel]) -> PreTrainedModel:
    *top, grid = levels  # two levels: the bottom grid's PixelCNN, conditioned on the top grid
    return build_pixelcnn(cfg.preset, grid.codebook_size, vocab.num_classes, grid.grid_h, grid.grid_w, *top, **cfg.model)


def _maskgit(cfg: PriorRunConfig, vocab: PriorVocab, levels: Sequence[GridLevel]) -> PreTrainedModel:
    (level,) = levels
    return build_maskgit(cfg.preset, vocab.codebook_size, vocab.num_classes, level.grid_h, level.grid_w, **cfg.model)


def _gpt_fits(config: PreTrainedConfig, levels: Sequence[GridLevel], vocab: PriorVocab) -> str | None:
    return _sequence_fits(config, levels, vocab.vocab_size,
                          f"K={vocab.codebook_size} codes + {vocab.num_classes} classes + 1")


def _maskgit_fits(config: PreTrainedConfig, levels: Sequence[GridLevel], vocab: PriorVocab) -> str | None:
    return _sequence_fits(config, levels, mask_token(vocab) + 1,
                          f"K={vocab.codebook_size} codes + {vocab.num_classes} classes + 1 + [MASK]")


def _sequence_fits(config: PreTrainedConfig, levels: Sequence[GridLevel], vocab_size: int, tokens: str) -> str | None:
    """A transformer over [cond, every level's codes]: its vocabulary must hold `tokens` (`vocab_size`
    ids) and its positions the sequence; a config.json key is named as the file spells it (GPT-2: n_positions)."""
    num_tokens = sum(lv.grid_h * lv.grid_w for lv in levels)
    needs = (("vocab_size", vocab_size, tokens),
             ("max_position_embeddings", num_tokens + 1,
              f"T={num_tokens} codes ({describe_levels(levels)}) + 1 condition token"))
    for key, need, what in needs:
        if (have := getattr(config, key)) < need:
            return f"{config.attribute_map.get(key, key)} {have} is too small for {what} (needs >= {need})"
    return None


def _pixelcnn_fits(config: PreTrainedConfig, levels: Sequence[GridLevel], vocab: PriorVocab) -> str | None:
    """A PixelCNN is sized to its codes exactly (`build_pixelcnn` takes no override of these fields)."""
    *top, grid = levels
    need = code_settings(grid.codebook_size, vocab.num_classes, grid.grid_h, grid.grid_w, *top)
    wrong = [key for key, value in need.items() if getattr(config, key) != value]
    if not wrong:
        return None
    return (f"{', '.join(f'{key}={getattr(config, key)}' for key in wrong)} where {describe_levels(levels)} "
            f"with N={vocab.num_classes} classes need {', '.join(f'{key}={need[key]}' for key in wrong)}")


def _checked_by_its_class(config: PreTrainedConfig) -> None:
    """Llama, GPT-2 and our PixelCNN configs refuse bad sizes themselves."""


def _bert_sizes(config: PreTrainedConfig) -> str | None:
    return size_problem(config.to_dict())


PRIORS: dict[str, PriorKind] = {
    "gpt": PriorKind(_gpt, AutoModelForCausalLM, (LlamaConfig.model_type, GPT2Config.model_type),
                     _checked_by_its_class, _gpt_fits, NextToken(gpt_logits), max_levels=2),
    "pixelcnn": PriorKind(_pixelcnn, PixelCNNPrior, (PixelCNNConfig.model_type,), _checked_by_its_class,
                          _pixelcnn_fits, NextToken(pixelcnn_logits), max_levels=2),
    "maskgit": PriorKind(_maskgit, AutoModelForMaskedLM, (BertConfig.model_type,), _bert_sizes, _maskgit_fits,
                         MaskedTokens(), max_levels=1),
}
ARCHS = tuple(PRIORS)


def prior_kind(arch: str, source: str = "prior.arch") -> PriorKind:
    """The registry entry of `arch`; an unknown name is one line naming `source` and listing the registry."""
    if arch not in PRIORS:
        raise VqgenError(f"{source}: unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return PRIORS[arch]


def archs_for(num_levels: int) -> list[str]:
    """The archs that model `num_levels` levels, in registry order."""
    return [name for name, kind in PRIORS.items() if kind.max_levels >= num_levels]


def check_levels(arch: str, levels: Sequence[GridLevel], source: str) -> None:
    """Refuse, in one line naming `source`, levels `arch` cannot model (a two-level folder or prior
    for an arch whose two-level version is not in this version), naming the archs that can."""
    if len(levels) > prior_kind(arch).max_levels:
        able = archs_for(len(levels))
        raise VqgenError(
            f"{source}: holds {len(levels)} levels ({describe_levels(levels)}), but arch {arch} takes one level in "
            f"this version (its two-level version comes later); use arch {' or '.join(able)} "
            f"({' or '.join(f'--arch {name}' for name in able)}), which model both levels"
        )
