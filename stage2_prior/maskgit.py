"""The MaskGIT prior: a bidirectional transformer that predicts masked codes from the rest of the grid.

Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer": a BERT encoder over
[cond, x_0 ... x_{T-1}], where x_t is code c_t or, when unknown, a [MASK] token. Every masked
position is scored in one pass, so a grid is drawn in a few parallel steps (`sampling.maskgit`)
rather than T. The model is a stock `BertForMaskedLM` (the architecture of the paper's own code:
post-LN BERT, learned positions, GELU MLP, output tied to the token embeddings), so a saved prior
loads with plain `AutoModelForMaskedLM.from_pretrained`.

Token ids: those of `stage2_prior.vocab` (codes, classes, unconditional) plus K+N+1, the [MASK] token.
The training objective is in `stage2_prior.masking`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from transformers import BertConfig, BertForMaskedLM

from stage2_prior.gpt import GPT_PRESETS
from stage2_prior.overrides import build_config, check_at_least, check_positive, merge_overrides
from stage2_prior.vocab import PriorVocab
from vqgen.errors import VqgenError

# The GPT's sizes with a 3/2-wide MLP: BERT's GELU MLP has two matrices where Llama's SwiGLU has
# three, so a preset has about the same parameter count under both priors (README, bench).
MASKGIT_PRESETS: dict[str, dict[str, int]] = {
    name: {**sizes, "intermediate_size": sizes["intermediate_size"] * 3 // 2} for name, sizes in GPT_PRESETS.items()
}
SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def mask_token(vocab: PriorVocab) -> int:
    """The [MASK] token id, one past the prior vocabulary."""
    return vocab.vocab_size


def build_maskgit(
    preset: str, codebook_size: int, num_classes: int, grid_h: int, grid_w: int, /, **overrides
) -> BertForMaskedLM:
    """A fresh MaskGIT prior for (h, w) grids of K codes and N classes; `overrides` are BertConfig
    fields (checked against its signature)."""
    if preset not in MASKGIT_PRESETS:
        raise VqgenError(
            f"prior.preset: unknown MaskGIT preset '{preset}'; choose one of {', '.join(MASKGIT_PRESETS)}"
        )
    vocab, num_tokens = PriorVocab(codebook_size, num_classes), grid_h * grid_w
    kwargs = {
        **MASKGIT_PRESETS[preset],
        "vocab_size": mask_token(vocab) + 1,
        "max_position_embeddings": num_tokens + 1,
        "type_vocab_size": 1,  # one segment: the token type embedding is a constant bias
        "pad_token_id": None,  # BERT's default 0 would freeze code 0's embedding (padding_idx)
    }
    kwargs = merge_overrides(BertConfig, kwargs, overrides)
    check_positive(kwargs, SIZE_KEYS)
    check_at_least(kwargs, "vocab_size", mask_token(vocab) + 1,
                   f"too small for K={codebook_size} codes + {num_classes} classes + 1 + [MASK]")
    check_at_least(kwargs, "max_position_embeddings", num_tokens + 1,
                   f"too short for T={num_tokens} codes + 1 condition token")
    if kwargs.get("is_decoder") or kwargs.get("add_cross_attention"):
        raise VqgenError("prior.model: a MaskGIT prior attends both ways over one sequence; remove "
                         "is_decoder and add_cross_attention")
    return BertForMaskedLM(build_config(BertConfig, {**kwargs, "attn_implementation": "sdpa"}))


def maskgit_logits(model: torch.nn.Module, tokens: torch.Tensor, cond: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Logits of every position, restricted to codes.

    tokens (B, h, w) int64 (codes, or the [MASK] id where unknown), cond (B,) condition tokens in
    [K, K+N] -> logits (B, T, K).
    """
    input_ids = torch.cat([cond[:, None], rearrange(tokens, "b h w -> b (h w)")], dim=1)  # (B, 1 + T)
    return model(input_ids=input_ids).logits[:, 1:, :codebook_size]
