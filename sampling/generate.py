"""Drawing code grids from an autoregressive prior (GPT with a KV cache, or PixelCNN in raster order),
and what every prior's sampler shares: the settings, the labels plan and the batch loop.

Modified from LlamaGen's autoregressive/models/generate.py (prefill / decode_one_token /
decode_n_tokens / generate), with the transformers KV cache in place of LlamaGen's own. The loop
is ours rather than `model.generate` for two reasons: classifier-free guidance needs the
conditional and unconditional rows mixed before every draw (a logits processor sees only one
batch of rows and cannot feed the mixed token back to both halves), and each sample draws from
its own random stream (`SampleNoise`) so that samples do not depend on the batch they fall in.

Each prior's registry entry (`stage2_prior.registry`) names its `Sampler`: the MaskGIT one is in
`sampling.maskgit`.

A two-level GPT prior draws one sequence [cond, top codes, bottom codes] in a single pass (top
first, then bottom, with one KV cache): each position draws only from its own level's token range
(`stage2_prior.vocab`), and everything else (guidance, its schedule over all the draws, the
filters, the per-sample streams) is as for one level. A two-level PixelCNN draws the top grid, runs
its conditioning stack on it once, then draws the bottom grid: the same draws in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor
from transformers import DynamicCache, StaticCache

from core.code_grids import LEVEL_NAMES, GridLevel
from core.config import setting
from core.cpu_threads import LoadFollower
from core.errors import VqgenError
from sampling.guidance import CFG_SCHEDULES, guidance_problem, guidance_scales
from sampling.logits import Filters, SampleNoise, guide, pick
from stage2_prior.vocab import Codes, PriorVocab

UNCOND = -1  # the label of an unconditional sample
KV_CACHES = ("dynamic", "static", "none")


@dataclass
class SampleConfig:
    """What to sample. Labels are a function of the sample index, so a run can be resumed or split.

    per_class > 0 samples per_class images of each class in `classes` (all classes when None),
    class-major, and ignores n. Otherwise sample i gets classes[i % len(classes)]. Class -1 is the
    unconditional token (the only choice for an unconditional prior).
    """

    n: int = setting(64, "number of images (unless per_class > 0)", ge=1)
    temperature: float = setting(1.0, "0: greedy", ge=0)
    top_k: int = setting(0, "keep the k most likely codes; 0: off", ge=0)
    top_p: float = setting(1.0, "keep the most likely codes up to probability p; 1.0: off", gt=0, le=1)
    cfg_scale: float = setting(1.0, "classifier-free guidance; 1.0: none (conditional logits only)", ge=0)
    cfg_schedule: str | None = setting(None, "guidance over the draws (codes; MaskGIT: steps): linear and cosine "
                                       "ramp from 1 up to cfg_scale; null: constant", choices=CFG_SCHEDULES)
    cfg_interval: list[float] | None = setting(None, "[start, end): guide only the draws that begin in this "
                                               "fraction of the way, e.g. [0, 0.5]; null: every draw",
                                               ge=0, le=1, length=2)
    classes: list[int] | None = setting(None, "class ids to draw from (-1: unconditional); null: all", ge=-1)
    per_class: int = setting(0, "images per class, class-balanced; 0: n images", ge=0)
    batch_size: int = setting(64, "images drawn at once", ge=1)
    seed: int = setting(0, "sample i depends on (seed, i) only", ge=0)
    kv_cache: str | None = setting(None, "autoregressive GPT only; none recomputes the prefix (a reference, "
                                   "slow); null: dynamic", choices=KV_CACHES)
    steps: int | None = setting(None, "maskgit only: decoding steps, 1..T; null: 8", ge=1)
    choice_temperature: float | None = setting(None, "maskgit only: Gumbel noise on the confidence, annealed to 0; "
                                               "null: 4.5", ge=0)

    @property
    def filters(self) -> Filters:
        return Filters(self.temperature, self.top_k, self.top_p)


def check_config(cfg: SampleConfig, num_classes: int, source: str) -> None:
    """Raise VqgenError for settings the prior at `source` cannot honour."""
    if not (cfg.temperature >= 0 and math.isfinite(cfg.temperature)) or cfg.top_k < 0 or not 0 < cfg.top_p <= 1 \
            or cfg.batch_size < 1 or not math.isfinite(cfg.cfg_scale):
        raise VqgenError(
            "sample: need a finite temperature >= 0, top_k >= 0, 0 < top_p <= 1, batch_size >= 1 and a finite "
            f"cfg_scale; got {cfg.temperature}, {cfg.top_k}, {cfg.top_p}, {cfg.batch_size}, {cfg.cfg_scale}"
        )
    if cfg.per_class < 0 or (cfg.per_class == 0 and cfg.n < 1):
        raise VqgenError(f"sample: need n >= 1 (or per_class >= 1); got n={cfg.n}, per_class={cfg.per_class}")
    if cfg.kv_cache not in (None, *KV_CACHES):
        raise VqgenError(f"sample.kv_cache: '{cfg.kv_cache}' is not one of {', '.join(KV_CACHES)}")
    if problem := guidance_problem(cfg.cfg_schedule, cfg.cfg_interval, cfg.cfg_scale):
        raise VqgenError(problem)
    if cfg.steps is not None and cfg.steps < 1:
        raise VqgenError(f"sample.steps={cfg.steps}: a MaskGIT prior needs at least 1 decoding step; pass --steps 8")
    if num_classes == 0 and cfg.cfg_scale != 1.0:
        raise unconditional(source)
    check_classes(cfg.classes or [], num_classes, source)
    if cfg.seed < 0:
        raise VqgenError(f"sample.seed={cfg.seed}: must be 0 or more (each sample's stream is seeded from it); "
                         "pass e.g. --seed 0")


def unconditional(source: str) -> VqgenError:
    return VqgenError(f"{source}: the prior is unconditional (num_classes 0); drop sample.classes and set "
                      "sample.cfg_scale=1")


def check_classes(classes: list[int], num_classes: int, source: str) -> None:
    """Refuse class ids the prior at `source` does not have (-1, unconditional, it always has)."""
    if num_classes == 0 and set(classes) - {UNCOND}:
        raise unconditional(source)
    bad = [c for c in classes if not UNCOND <= c < num_classes]
    if bad:
        raise VqgenError(
            f"{source}: sample.classes {bad} out of range; this prior has classes 0..{num_classes - 1} "
            "(-1: unconditional)"
        )


def plan_labels(cfg: SampleConfig, num_classes: int) -> Tensor:
    """The label of every sample, (n,) int64 with -1 for unconditional."""
    classes = cfg.classes or (list(range(num_classes)) if num_classes else [UNCOND])
    if cfg.per_class > 0:
        return torch.tensor(classes).repeat_interleave(cfg.per_class)
    return torch.tensor(classes)[torch.arange(cfg.n) % len(classes)]


@dataclass(frozen=True)
class GridSpec:
    """What a prior samples: its vocabulary (stage2_prior.vocab) and the (h, w) code grid; for two
    levels, `levels` (top, bottom) and grid_h, grid_w the bottom's."""

    vocab: PriorVocab
    grid_h: int
    grid_w: int
    levels: tuple[GridLevel, ...] = ()  # two levels, coarse to fine; () for one level

    @classmethod
    def of_levels(cls, vocab: PriorVocab, levels: list[GridLevel]) -> GridSpec:
        if len(levels) == 1:
            return cls(vocab, levels[0].grid_h, levels[0].grid_w)
        return cls(vocab, levels[-1].grid_h, levels[-1].grid_w, tuple(levels))

    @property
    def grids(self) -> tuple[GridLevel, ...]:
        """Every level drawn, coarse to fine (one level: `codes`, grid_h x grid_w)."""
        return self.levels or (GridLevel(LEVEL_NAMES[1][0], self.grid_h, self.grid_w, self.vocab.codebook_size),)

    @property
    def spans(self) -> list[range]:
        """The token ids each position of the sequence draws from: its level's range."""
        return [span for level, span in zip(self.grids, self.vocab.level_ranges)
                for _ in range(level.grid_h * level.grid_w)]

    def split(self, tokens: Tensor) -> Codes:
        """Drawn tokens (B, T) -> codes (B, h, w) for one level, {level: (B, h, w) in [0, K_l)} for two."""
        if not self.levels:
            return rearrange(tokens, "b (h w) -> b h w", h=self.grid_h)
        parts = tokens.split([lv.grid_h * lv.grid_w for lv in self.levels], dim=1)
        return {lv.name: rearrange(part - span.start, "b (h w) -> b h w", h=lv.grid_h)
                for lv, part, span in zip(self.levels, parts, self.vocab.level_ranges)}


class Given(NamedTuple):
    """Codes a completion keeps: codes (B, h, w) int64, taken where keep (h, w) bool is True (one mask
    for the whole batch); the sampler draws the rest and never changes these."""

    codes: Tensor
    keep: Tensor


# One batch of a prior's samples: (model, spec, labels (B,), the samples' global indices, cfg, given codes or
# None) -> codes (B, h, w).
DrawBatch = Callable[[torch.nn.Module, GridSpec, Tensor, list[int], SampleConfig, Given | None], Tensor]
# Refuses, in one line naming `source`, settings this prior cannot honour: (cfg, spec, source) -> None.
CheckSettings = Callable[[SampleConfig, GridSpec, str], None]
# Refuses, in one line naming `source`, a keep mask (h, w) this prior cannot complete: (keep, source) -> None.
CheckKeep = Callable[[Tensor, str], None]


class Sampler(NamedTuple):
    """What a prior's registry entry supplies for sampling."""

    draw: DrawBatch
    check: CheckSettings
    check_keep: CheckKeep


def check_autoregressive(cfg: SampleConfig, spec: GridSpec, source: str) -> None:
    """MaskGIT's settings mean nothing to a prior that draws one code per pass."""
    given = [f"sample.{key}" for key in ("steps", "choice_temperature") if getattr(cfg, key) is not None]
    if given:
        raise VqgenError(f"{source}: {' and '.join(given)} set MaskGIT's parallel decoding, but this prior is "
                         "autoregressive (one pass per code); drop them (--steps is for arch maskgit)")


def prefix_length(keep: Tensor) -> int | None:
    """p when keep (h, w) holds exactly the first p codes in raster order, else None."""
    flat = keep.flatten().long()
    p = int(flat.sum())
    return p if bool(flat[:p].all()) else None


def check_prefix(keep: Tensor, source: str) -> None:
    """An autoregressive prior sees only the codes before the one it draws: it completes a raster prefix."""
    if prefix_length(keep) is None:
        raise VqgenError(f"{source}: this prior is autoregressive and completes only a prefix in raster order "
                         "(whole top rows, then the left of the next row); keep top rows (--keep-rows R) or "
                         "use a maskgit prior, which completes any mask")


def _draw(logits: Tensor, scale: float, cfg: SampleConfig, noise: SampleNoise, guided: bool) -> Tensor:
    """Rows (R, K) -> tokens (B,): guidance at `scale` on [cond; uncond] rows, then filters and the draw."""
    logits = guide(logits.float(), scale) if guided else logits.float()
    eps = noise.exponential(logits.shape[-1]) if cfg.temperature > 0 else None
    return pick(logits, cfg.filters, eps)


def draw_scales(cfg: SampleConfig, n: int) -> list[float]:
    """The guidance scale of each of n draws (`sampling.guidance`)."""
    return guidance_scales(cfg.cfg_scale, cfg.cfg_schedule, cfg.cfg_interval, n)


def condition_rows(tokens: Tensor, uncond: Tensor, guided: bool) -> Tensor:
    """(B,) -> (R,) rows the model sees: [cond; uncond] under guidance, else cond."""
    return torch.cat([tokens, uncond]) if guided else tokens


def both_halves(tokens: Tensor, guided: bool) -> Tensor:
    """Drawn tokens (B, ...) go to their conditional and their unconditional rows: -> (R, ...)."""
    return torch.cat([tokens, tokens]) if guided else tokens


def _make_cache(model: torch.nn.Module, kind: str | None, max_len: int):
    if kind == "static":
        return StaticCache(config=model.config, max_cache_len=max_len)
    return None if kind == "none" else DynamicCache(config=model.config)


def _code_logits(model: torch.nn.Module, ids: Tensor, cache, k: int) -> Tensor:
    """Last-position logits of the first k tokens (the codes of every level): ids (R, t) -> (R, k)."""
    out = model(input_ids=ids, past_key_values=cache, use_cache=cache is not None, logits_to_keep=1)
    return out.logits[:, -1, :k]


def prefill(model: torch.nn.Module, ids: Tensor, cache, k: int) -> Tensor:
    """Run the condition token and any kept codes, ids (R, 1 + p), through the model in one pass,
    filling `cache`; -> logits (R, K) of code p."""
    return _code_logits(model, ids, cache, k)


def decode_one_token(model: torch.nn.Module, seq: Tensor, cache, k: int) -> Tensor:
    """Logits (R, K) of the next code given seq (R, t). With a cache only the last token is fed;
    without one (kv_cache "none") the whole prefix is recomputed: the slow reference."""
    return _code_logits(model, seq if cache is None else seq[:, -1:], cache, k)


def decode_n_tokens(model: torch.nn.Module, cond: Tensor, n: int, cfg: SampleConfig, noise: SampleNoise,
                    guided: bool, k: int | list[range], prefix: Tensor | None = None) -> Tensor:
    """Draw n code tokens after the condition rows cond (R,), the first p of them given as prefix (B, p)
    (a completion): -> (B, n), starting with the prefix unchanged. Token t draws from range(k), or
    from k[t] when k lists each position's range (two levels). Token t is guided at the scale
    `draw_scales` gives position t of n, kept or not, so a completion draws as a sample would."""
    spans = [range(k)] * n if isinstance(k, int) else k
    prefix = cond.new_zeros(len(cond) // (2 if guided else 1), 0) if prefix is None else prefix
    if prefix.shape[1] == n:
        return prefix
    top = max(span.stop for span in spans)
    cache = _make_cache(model, cfg.kv_cache, max_len=n)
    seq = torch.cat([rearrange(cond, "r -> r 1"), both_halves(prefix, guided)], dim=1)
    logits = prefill(model, seq, cache, top)
    codes, scales = list(prefix.unbind(1)), draw_scales(cfg, n)
    for t in range(prefix.shape[1], n):
        span = spans[t]
        codes.append(_draw(logits[:, span.start:span.stop], scales[t], cfg, noise, guided) + span.start)
        if t + 1 < n:
            seq = torch.cat([seq, rearrange(both_halves(codes[-1], guided), "r -> r 1")], dim=1)
            logits = decode_one_token(model, seq, cache, top)
    return torch.stack(codes, dim=1)


def _raster_prefix(given: Given | None, device: torch.device) -> Tensor | None:
    """The kept codes of a raster-prefix completion, (B, p); None for plain sampling."""
    if given is None:
        return None
    p = prefix_length(given.keep)
    assert p is not None, "check_prefix refuses a keep mask that is not a raster prefix"
    return rearrange(given.codes, "b h w -> b (h w)")[:, :p].to(device)


@torch.inference_mode()
def generate_gpt(model: torch.nn.Module, spec: GridSpec, labels: Tensor, indices: list[int],
                 cfg: SampleConfig, given: Given | None = None) -> Tensor:
    """Sample code grids from a causal-LM prior. labels (B,) (-1: unconditional), indices: the
    samples' global indices (their random streams), given: kept codes of a raster prefix (their
    cache prefilled in one pass) -> codes (B, h, w) int64; two levels: {"top", "bottom"} grids, the
    top drawn first and seen whole by every bottom code."""
    device = next(model.parameters()).device
    guided = cfg.cfg_scale != 1.0
    vocab = spec.vocab
    cond = vocab.cond_token(vocab.class_index(labels)).to(device)
    rows = condition_rows(cond, torch.full_like(cond, vocab.uncond_token), guided)
    noise = SampleNoise(cfg.seed, indices, device)
    spans = spec.spans
    tokens = decode_n_tokens(model, rows, len(spans), cfg, noise, guided, spans, prefix=_raster_prefix(given, device))
    return spec.split(tokens)


def _draw_raster(logits_of: Callable[[Tensor], Tensor], codes: Tensor, start: int, scales: list[float],
                 cfg: SampleConfig, noise: SampleNoise, guided: bool) -> Tensor:
    """Fill codes (R, h, w) in raster order from position `start` on, in place: each code drawn from
    logits_of(codes) (R, h, w, K) at its position, the whole grid recomputed each step (van den Oord
    et al. 2016), position t guided at scales[t]."""
    w = codes.shape[2]
    for t in range(start, codes.shape[1] * w):
        i, j = divmod(t, w)
        codes[:, i, j] = both_halves(_draw(logits_of(codes)[:, i, j], scales[t], cfg, noise, guided), guided)
    return codes


@torch.inference_mode()
def generate_pixelcnn(model: torch.nn.Module, spec: GridSpec, labels: Tensor, indices: list[int],
                      cfg: SampleConfig, given: Given | None = None) -> Codes:
    """Sample code grids from a PixelCNN prior in raster order, after the kept raster prefix of
    `given`. labels (B,) (-1: unconditional) -> codes (B, h, w) int64; two levels: {"top", "bottom"}
    grids, the top drawn first, then the bottom conditioned on it."""
    device = next(model.parameters()).device
    guided = cfg.cfg_scale != 1.0
    vocab = spec.vocab
    index = vocab.class_index(labels).to(device)
    rows = condition_rows(index, torch.full_like(index, vocab.uncond_index), guided)
    noise = SampleNoise(cfg.seed, indices, device)
    # Guidance is scheduled over every draw of every level, as the two-level GPT's is (`spec.spans`).
    scales = draw_scales(cfg, len(spec.spans))
    if spec.levels:
        assert given is None, "check_pair refuses to complete with a two-level prior"
        return _pixelcnn_levels(model, spec, rows, scales, cfg, noise, guided, len(labels))
    codes = torch.zeros(len(rows), spec.grid_h, spec.grid_w, dtype=torch.long, device=device)
    start = 0
    if given is not None:
        start = prefix_length(given.keep)
        kept = torch.where(given.keep, given.codes, 0)  # as in plain sampling, 0 where a code is still to draw
        codes[:] = both_halves(kept.to(device), guided)
    _draw_raster(lambda grid: model(grid, rows).logits, codes, start, scales, cfg, noise, guided)
    return codes[: len(labels)]


def _pixelcnn_levels(model: torch.nn.Module, spec: GridSpec, rows: Tensor, scales: list[float], cfg: SampleConfig,
                     noise: SampleNoise, guided: bool, batch: int) -> dict[str, Tensor]:
    """A two-level PixelCNN's draws for condition rows (R,): the top grid, then the bottom one seeing
    the drawn top through the conditioning stack, run once for the batch -> {"top", "bottom"} (B, ...)."""
    top_level, bottom_level = spec.levels
    top = rows.new_zeros(len(rows), top_level.grid_h, top_level.grid_w)
    _draw_raster(lambda grid: model.top_logits(grid, rows), top, 0, scales, cfg, noise, guided)
    s = model.condition(top)  # the top is whole now: its features serve every bottom step
    bottom = rows.new_zeros(len(rows), bottom_level.grid_h, bottom_level.grid_w)
    first = top_level.grid_h * top_level.grid_w
    _draw_raster(lambda grid: model.bottom(grid, rows, s), bottom, 0, scales[first:], cfg, noise, guided)
    return {top_level.name: top[:batch], bottom_level.name: bottom[:batch]}


GPT_SAMPLER = Sampler(generate_gpt, check_autoregressive, check_prefix)
PIXELCNN_SAMPLER = Sampler(generate_pixelcnn, check_autoregressive, check_prefix)


class Batch(NamedTuple):
    indices: list[int]  # global sample indices
    labels: Tensor  # (B,) int64, -1 unconditional
    codes: Codes  # (B, h, w) int64; two levels: {level: (B, h, w)}


def _cpu(codes: Codes) -> Codes:
    return codes.cpu() if isinstance(codes, Tensor) else {name: grid.cpu() for name, grid in codes.items()}


def generate(model: torch.nn.Module, draw: DrawBatch, spec: GridSpec, labels: Tensor, indices: list[int],
             cfg: SampleConfig, given: Given | None = None) -> Iterator[Batch]:
    """Sample the given indices (with their labels (n,)) batch by batch with the prior's `draw`
    (its `Sampler.draw`, e.g. `generate_gpt`); with `given` (codes (n, h, w), keep (h, w)), complete
    those codes instead."""
    threads = LoadFollower(next(model.parameters()).device.type)
    for start in range(0, len(indices), cfg.batch_size):
        threads.follow()
        part = slice(start, start + cfg.batch_size)
        kept = None if given is None else Given(given.codes[part], given.keep)
        yield Batch(indices[part], labels[part], _cpu(draw(model, spec, labels[part], indices[part], cfg, kept)))
