"""Drawing code grids from a MaskGIT prior by iterative parallel decoding (Chang et al. 2022, sec. 3.2).

Modified from google-research/maskgit `libml/parallel_decode.py` (`decode`, `mask_by_random_topk`).
Every grid starts with its T codes masked. Each of S steps:
1. scores every position in one pass (with guidance, [cond; uncond] rows mixed as the AR samplers mix them);
2. draws a code at every masked position (temperature, top-k, top-p: `sampling.logits`);
3. keeps the most confident draws and masks the others again, so that n_s positions stay masked:
   n_s = floor(T cos(pi/2 * s/S)) (the cosine schedule), at least 1 and at most n_{s-1} - 1 before
   the last step, 0 after it (`mask_schedule`). The confidence of a draw is its log-probability
   under the model's (guided) logits, whatever temperature and filters drew it, as in the paper's
   code, plus Gumbel noise scaled by choice_temperature * (1 - s/S): early choices are more random.

A completion (`Given`) starts with its kept codes unmasked; they are never masked again, and the M
masked positions follow the schedule from M, in min(S, M) steps. Classifier-free guidance at step s
uses the scale `sampling.guidance` gives step s of the steps (cfg_schedule, cfg_interval).

Each sample draws from its own stream (`SampleNoise`): per step, K Exp(1) numbers for each of its
masked positions (the code draws; drawn and unused when greedy), then one per masked position (the
Gumbel noise). Every sample has the same number of masked positions at a step, so its numbers, and its
codes, depend on (seed, index) only: not on the batch, the process or a resume.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor

from core.errors import VqgenError
from sampling.generate import Given, GridSpec, SampleConfig, Sampler, both_halves, condition_rows, draw_scales
from sampling.logits import SampleNoise, draw, guide, shape
from stage2_prior.maskgit import mask_token, maskgit_logits
from stage2_prior.masking import lowest

DEFAULT_STEPS = 8  # the paper's ImageNet setting (sec. 4.2)
DEFAULT_CHOICE_TEMPERATURE = 4.5  # the paper's code, configs/maskgit_class_cond_config.py


def mask_schedule(num_tokens: int, steps: int) -> list[int]:
    """Masked positions left after each of `steps` steps, from num_tokens masked (see the module doc)."""
    left, counts = num_tokens, []
    for step in range(1, steps + 1):
        target = math.floor(num_tokens * math.cos(math.pi / 2 * step / steps))
        left = 0 if step == steps else max(1, min(left - 1, target))
        counts.append(left)
    return counts


def check_maskgit(cfg: SampleConfig, spec: GridSpec, source: str) -> None:
    """A KV cache means nothing to a bidirectional prior; each step decodes at least one code."""
    if cfg.kv_cache is not None:
        raise VqgenError(f"{source}: sample.kv_cache is for autoregressive GPT priors; this MaskGIT prior "
                         "rescores the whole grid each step and has no cache; drop it")
    num_tokens = spec.grid_h * spec.grid_w
    if cfg.steps is not None and not 1 <= cfg.steps <= num_tokens:
        raise VqgenError(f"sample.steps={cfg.steps}: the prior's {spec.grid_h}x{spec.grid_w} grid has T={num_tokens} "
                         f"codes and each step decodes at least one; pass --steps between 1 and {num_tokens}")


def decode_step(model: torch.nn.Module, tokens: Tensor, rows: Tensor, left: int, anneal: float, scale: float,
                cfg: SampleConfig, noise: SampleNoise, spec: GridSpec) -> Tensor:
    """tokens (B, T) ([MASK] where unknown), condition rows (R,) (R = 2B: [cond; uncond], guided at
    `scale`) -> (B, T) with `left` positions masked again, those whose draws were least confident
    (Gumbel noise scaled by `anneal`)."""
    vocab, k, guided = spec.vocab, spec.vocab.codebook_size, len(rows) == 2 * len(tokens)
    masked = tokens == mask_token(vocab)
    count = int(masked[0].sum())  # the same in every row: all follow one schedule
    grid = rearrange(both_halves(tokens, guided), "r (h w) -> r h w", h=spec.grid_h)
    logits = maskgit_logits(model, grid, rows, k).float()  # (R, T, K)
    logits = (guide(logits, scale) if guided else logits)[masked]  # (B n, K)
    # Drawn even when greedy, so that the choice noise below sits at the same place in the stream.
    eps = rearrange(noise.exponential(count * k), "b (n k) -> (b n) k", k=k)
    drawn = draw(shape(logits, cfg.filters), eps if cfg.temperature > 0 else None)  # (B n,)
    log_p = logits.log_softmax(-1).gather(-1, drawn[:, None])[:, 0]
    confidence = rearrange(log_p, "(b n) -> b n", n=count) - anneal * noise.exponential(count).log()
    remask = lowest(confidence, torch.full((len(tokens),), left, device=tokens.device))  # (B, n)
    out = tokens.clone()
    out[masked] = torch.where(remask.flatten(), mask_token(vocab), drawn)
    return out


@torch.inference_mode()
def decode(model: torch.nn.Module, spec: GridSpec, rows: Tensor, indices: list[int],
           cfg: SampleConfig, given: Given | None = None) -> list[Tensor]:
    """Decode the samples `indices` from condition rows (R,) ([cond; uncond] when guided), keeping
    the codes `given` keeps: the tokens (B, T) after each step, [MASK] where still unknown; the last
    holds only codes."""
    tokens = _start(spec, len(indices), given, rows.device)
    masked = int((tokens[0] == mask_token(spec.vocab)).sum())
    if masked == 0:
        return [tokens]  # everything kept: nothing to draw
    steps = min(cfg.steps if cfg.steps is not None else DEFAULT_STEPS, masked)
    choice = cfg.choice_temperature if cfg.choice_temperature is not None else DEFAULT_CHOICE_TEMPERATURE
    noise = SampleNoise(cfg.seed, indices, rows.device)
    history = []
    for step, (left, scale) in enumerate(zip(mask_schedule(masked, steps), draw_scales(cfg, steps)), 1):
        tokens = decode_step(model, tokens, rows, left, choice * (1 - step / steps), scale, cfg, noise, spec)
        history.append(tokens)
    return history


def _start(spec: GridSpec, count: int, given: Given | None, device: torch.device) -> Tensor:
    """The tokens (B, T) decoding starts from: [MASK] everywhere, or where `given` keeps no code."""
    tokens = torch.full((count, spec.grid_h * spec.grid_w), mask_token(spec.vocab), dtype=torch.long, device=device)
    if given is not None:
        keep = rearrange(given.keep, "h w -> (h w)").to(device)
        tokens[:, keep] = rearrange(given.codes, "b h w -> b (h w)").to(device)[:, keep]
    return tokens


@torch.inference_mode()
def generate_maskgit(model: torch.nn.Module, spec: GridSpec, labels: Tensor, indices: list[int],
                     cfg: SampleConfig, given: Given | None = None) -> Tensor:
    """Sample code grids from a MaskGIT prior. labels (B,) (-1: unconditional), indices: the
    samples' global indices (their random streams), given: codes to keep (any mask) -> codes (B, h, w) int64."""
    vocab = spec.vocab
    cond = vocab.cond_token(vocab.class_index(labels)).to(next(model.parameters()).device)
    rows = condition_rows(cond, torch.full_like(cond, vocab.uncond_token), cfg.cfg_scale != 1.0)
    return rearrange(decode(model, spec, rows, indices, cfg, given)[-1], "b (h w) -> b h w", h=spec.grid_h)


def any_mask(keep: Tensor, source: str) -> None:
    """A bidirectional prior sees every kept code, wherever it is: it completes any mask."""


MASKGIT_SAMPLER = Sampler(generate_maskgit, check_maskgit, any_mask)
