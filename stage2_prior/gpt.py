"""The GPT prior: a stock transformers causal LM over code tokens.

Llama (RoPE, RMSNorm, SwiGLU; as in LlamaGen, Sun et al. 2024, "Autoregressive Model Beats
Diffusion") is the default, GPT-2 an option. Being stock, a saved prior loads with plain
`AutoModelForCausalLM.from_pretrained` and generates with `model.generate`.

Sequence: [cond, c_0 ... c_{T-1}] in raster order (layout in `stage2_prior.vocab`). Training feeds
the first T tokens and scores the T codes, so position t predicts c_t from cond and c_<t. Two levels
are one sequence [cond, top codes, bottom codes]: every bottom code sees the whole top grid.
"""

from __future__ import annotations

import torch
from einops import rearrange
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from core.errors import VqgenError
from stage2_prior.overrides import build_config, check_at_least, check_positive, merge_overrides
from stage2_prior.vocab import PriorVocab

# Sizes in the style of LlamaGen's GPT_models; intermediate = ~8/3 hidden (SwiGLU, Shazeer 2020)
# rounded to 64. `demo` is sized to learn the Fashion-MNIST 8x8 codes in minutes on 2 CPU cores.
# Keys are LlamaConfig's field names; GPT2_NAMES renames them for GPT-2.
GPT_PRESETS: dict[str, dict[str, int]] = {
    "demo": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 384},
    "tiny": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 704},
    "small": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "intermediate_size": 1408},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 2048},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 2816},
}

# The one mapping between the two families: LlamaConfig's name of each size field -> GPT2Config's.
GPT2_NAMES = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
              "intermediate_size": "n_inner", "max_position_embeddings": "n_positions"}

FAMILIES = ("llama", "gpt2")


def build_gpt(
    preset: str,
    codebook_size: int,
    num_classes: int,
    grid_h: int,
    grid_w: int,
    /,
    family: str = "llama",
    **overrides,
) -> PreTrainedModel:
    """A fresh causal LM for (h, w) grids of K codes and N classes; `overrides` are config fields
    of the family's transformers config (checked against its signature)."""
    return build_gpt_tokens(preset, PriorVocab(codebook_size, num_classes), grid_h * grid_w, family, overrides)


def build_gpt_tokens(preset: str, vocab: PriorVocab, num_tokens: int, family: str, overrides: dict) -> PreTrainedModel:
    """A fresh causal LM over sequences of `num_tokens` code tokens of `vocab` (every level's grid)."""
    config = gpt_config(preset, vocab, num_tokens, family, overrides)
    model = (LlamaForCausalLM if family == "llama" else GPT2LMHeadModel)(config)
    # Only codes are ever sampled: a plain `model.generate` never emits a class token.
    model.generation_config.suppress_tokens = list(range(vocab.codebook_size, config.vocab_size))
    return model


def gpt_config(
    preset: str, vocab: PriorVocab, num_tokens: int, family: str, overrides: dict
) -> LlamaConfig | GPT2Config:
    if preset not in GPT_PRESETS:
        raise VqgenError(f"prior.preset: unknown GPT preset '{preset}'; choose one of {', '.join(GPT_PRESETS)}")
    if family not in FAMILIES:
        raise VqgenError(f"prior.family: unknown family '{family}'; choose one of {', '.join(FAMILIES)}")
    cls = LlamaConfig if family == "llama" else GPT2Config
    names = {key: key for key in GPT2_NAMES} if family == "llama" else GPT2_NAMES
    sizes = {**GPT_PRESETS[preset], "max_position_embeddings": num_tokens + 1}
    kwargs = {
        **{names[key]: value for key, value in sizes.items()},
        "vocab_size": vocab.vocab_size,
        "bos_token_id": vocab.uncond_token,  # an unconditional sample starts from this token
        "eos_token_id": None,  # grids have a fixed length T; generation stops by count
        "pad_token_id": None,
        # Untied: code and condition embeddings are inputs, the head scores codes (LlamaGen unties too).
        "tie_word_embeddings": False,
    }
    kwargs = merge_overrides(cls, kwargs, overrides)
    check_positive(kwargs, names.values())
    check_at_least(kwargs, "vocab_size", vocab.vocab_size,
                   f"too small for K={vocab.codebook_size} codes + {vocab.num_classes} classes + 1")
    check_at_least(kwargs, names["max_position_embeddings"], num_tokens + 1,
                   f"too short for T={num_tokens} codes + 1 condition token")
    return build_config(cls, {**kwargs, "attn_implementation": "sdpa"})


def gpt_code_logits(model: torch.nn.Module, codes: torch.Tensor, cond: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Teacher-forced logits of every code.

    codes (B, h, w) int64, cond (B,) condition tokens -> logits (B, T, K), restricted to codes.
    """
    return gpt_token_logits(model, rearrange(codes, "b h w -> b (h w)"), cond)[..., :codebook_size]


def gpt_token_logits(model: torch.nn.Module, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits over the whole vocabulary: code tokens (B, T), cond (B,) -> (B, T, V)."""
    input_ids = torch.cat([cond[:, None], tokens[:, :-1]], dim=1)  # (B, T): cond, c_0 .. c_{T-2}
    return model(input_ids=input_ids).logits


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
