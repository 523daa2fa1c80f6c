"""The MaskGIT prior: a bidirectional transformer that predicts masked codes from the rest of the grid.

Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer": a BERT encoder over
[cond, x_0 ... x_{T-1}], where x_t is code c_t or, when unknown, a [MASK] token. Every masked
position is scored in one pass, so a grid is drawn in a few parallel steps (`sampling.maskgit`)
rather than T. The model is a stock `BertForMaskedLM` (the architecture of the paper's own code:
post-LN BERT, learned positions, GELU MLP, an MLM head; untied here, see below), so a saved prior
loads with plain `AutoModelForMaskedLM.from_pretrained`.

Token ids: those of `stage2_prior.vocab` (codes, classes, unconditional) plus K+N+1, the [MASK] token.
The training objective is in `stage2_prior.masking`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from transformers import BertConfig, BertForMaskedLM

from core.errors import VqgenError
from stage2_prior.gpt import GPT_PRESETS
from stage2_prior.overrides import build_config, check_at_least, merge_overrides, positive_problem
from stage2_prior.vocab import PriorVocab

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
        # Untied, as the GPT prior (and LlamaGen): inputs embed codes, classes and [MASK], the head
        # scores codes. A tied head would also share storage, which a safetensors checkpoint refuses.
        "tie_word_embeddings": False,
        # No dropout, as the Llama prior: the paper's 0.1 slowed small runs several-fold, and dropout
        # draws differ between processes, so a run would no longer match across process counts.
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    kwargs = merge_overrides(BertConfig, kwargs, overrides)
    if problem := size_problem(kwargs):
        raise VqgenError(f"prior.model.{problem}; fix the value")
    check_at_least(kwargs, "vocab_size", mask_token(vocab) + 1,
                   f"too small for K={codebook_size} codes + {num_classes} classes + 1 + [MASK]")
    check_at_least(kwargs, "max_position_embeddings", num_tokens + 1,
                   f"too short for T={num_tokens} codes + 1 condition token")
    if kwargs.get("is_decoder") or kwargs.get("add_cross_attention"):
        raise VqgenError("prior.model: a MaskGIT prior attends both ways over one sequence; remove "
                         "is_decoder and add_cross_attention")
    model = BertForMaskedLM(build_config(BertConfig, {**kwargs, "attn_implementation": "sdpa"}))
    # Untied, BERT's head keeps `cls.predictions.bias` (the bias it ties to the decoder's) but never
    # uses it: frozen, it is no trainable parameter that DDP would wait on for a gradient.
    model.cls.predictions.bias.requires_grad_(False)
    return model


def size_problem(values: dict) -> str | None:
    """What is wrong with the sizes of a BertConfig's `values`, or None. BertConfig checks none of
    them, and a BERT builds even with a negative head count (its head size turns negative too)."""
    if problem := positive_problem(values, SIZE_KEYS):
        return problem
    if values["hidden_size"] % values["num_attention_heads"]:
        return f"hidden_size {values['hidden_size']} is not a multiple of num_attention_heads {values['num_attention_heads']}"
    return None


def maskgit_logits(model: torch.nn.Module, tokens: torch.Tensor, cond: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Logits of every position, restricted to codes.

    tokens (B, h, w) int64 (codes, or the [MASK] id where unknown), cond (B,) condition tokens in
    [K, K+N] -> logits (B, T, K).
    """
    input_ids = torch.cat([cond[:, None], rearrange(tokens, "b h w -> b (h w)")], dim=1)  # (B, 1 + T)
    return model(input_ids=input_ids).logits[:, 1:, :codebook_size]
