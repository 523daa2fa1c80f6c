"""Completing images with a prior: encode, keep some codes, draw the others, decode.

    keep = keep_rows(h, w, rows=3)                      # the top 3 rows of codes
    done = complete_images(prior, tokenizer, images, keep, SampleConfig(n=4, cfg_scale=1.5), labels)

Completion j of image b is sample index b * n + j of the run's seed: it draws from the stream of
(seed, b * n + j), whatever the batch, so a completion can be made again alone. The autoregressive
priors (gpt, pixelcnn) complete a raster-order prefix (the GPT prefills it in one pass); MaskGIT
completes any mask. Kept codes are never changed; with temperature 0 the result is deterministic.
Guidance, its schedule, temperature, top-k/p and the KV cache work as in `vqgen sample`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor

from core.config import setting
from core.errors import VqgenError
from sampling.generate import (
    UNCOND,
    DrawBatch,
    Given,
    GridSpec,
    SampleConfig,
    check_classes,
    check_config,
    generate,
)
from sampling.samplers import sampler_for
from stage1_vqvae.model import VQVAE
from stage2_prior.load import LoadedPrior

BLANK = 0.0  # mid grey in [-1, 1]: where a dropped code's pixels were, in Completion.kept


@dataclass
class CompleteConfig(SampleConfig):
    """`vqgen complete`'s settings: those of `vqgen sample`, with n counted per image."""

    n: int = setting(8, "completions per image", ge=1)
    classes: list[int] | None = setting(None, "the class of the completions: one for every image, or one per "
                                        "image (-1: unconditional); null: unconditional", ge=-1)
    per_class: int = setting(0, "not used by complete (each image gets n completions); read from a pipeline "
                             "YAML's sample: section and ignored", ge=0)


@dataclass(frozen=True)
class Completion:
    original: Tensor  # (B, C, H, W) in [-1, 1]: the images as given
    kept: Tensor  # (B, C, H, W): the images with the pixels of dropped codes blanked (BLANK)
    completions: Tensor  # (B, n, C, H, W): decoded completions
    codes: Tensor  # (B, n, h, w) int64: their codes, the kept ones unchanged
    labels: Tensor  # (B,) int64: the class of each image's completions, -1 unconditional


def keep_rows(grid_h: int, grid_w: int, rows: int) -> Tensor:
    """(h, w) bool, True for the codes of the top `rows` rows (the ones a completion keeps)."""
    if not 0 <= rows <= grid_h:
        raise VqgenError(f"--keep-rows {rows}: the code grid has {grid_h} rows; pass 0 to {grid_h}")
    keep = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    keep[:rows] = True
    return keep


def completion_labels(cfg: SampleConfig, count: int) -> Tensor:
    """The class of each of `count` images, (count,) int64, from sample.classes: none given is
    unconditional (-1), one class is every image's, else one per image."""
    classes = cfg.classes or [UNCOND]
    if len(classes) not in (1, count):
        raise VqgenError(f"sample.classes {classes}: give one class for every image, or one per image "
                         f"({count} images)")
    return torch.tensor(classes if len(classes) == count else classes * count, dtype=torch.long)


def check_completion(prior: LoadedPrior, count: int, keep: Tensor, cfg: SampleConfig,
                     labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Refuse, in one line, what the prior cannot complete for `count` images; -> their masks
    (count, h, w) bool and labels (count,) int64 (see `complete_images`)."""
    source, spec = str(prior.model.name_or_path), _spec(prior)
    sampler = sampler_for(prior.meta.arch)
    check_config(cfg, prior.meta.num_classes, source)
    sampler.check(cfg, spec, source)
    masks = _masks(keep, count, spec)
    for mask in masks.unique(dim=0):
        sampler.check_keep(mask, source)
    labels = completion_labels(cfg, count) if labels is None else labels.long().cpu()
    check_classes(labels.tolist(), prior.meta.num_classes, source)
    return masks, labels


def complete_images(prior: LoadedPrior, tokenizer: VQVAE, images: Tensor, keep: Tensor, cfg: SampleConfig,
                    labels: Tensor | None = None) -> Completion:
    """Complete images (B, C, H, W) in [-1, 1] keeping the codes where keep ((h, w) or (B, h, w) bool)
    is True: cfg.n completions each, image b of class labels[b] (-1: unconditional; None: from
    sample.classes). The tokenizer must be the prior's (`sampling.decode.check_pair`); both run on
    the prior's device."""
    masks, labels = check_completion(prior, len(images), keep, cfg, labels)
    spec, draw = _spec(prior), sampler_for(prior.meta.arch).draw
    device = next(prior.model.parameters()).device
    tokenizer = tokenizer.to(device)
    codes = _encode(tokenizer, images.to(device), spec)
    drawn = torch.stack([_complete_one(prior.model, draw, spec, Given(codes[b], masks[b]), int(labels[b]), b, cfg)
                         for b in range(len(images))])
    decoded = _decode(tokenizer, rearrange(drawn, "b n h w -> (b n) h w"), cfg.batch_size)
    return Completion(images.cpu(), _blank(images.cpu(), masks),
                      rearrange(decoded, "(b n) c h w -> b n c h w", b=len(images)), drawn, labels)


def _spec(prior: LoadedPrior) -> GridSpec:
    return GridSpec(prior.meta.vocab, prior.meta.grid_h, prior.meta.grid_w)


def _masks(keep: Tensor, count: int, spec: GridSpec) -> Tensor:
    """keep (h, w) or (count, h, w) -> (count, h, w) bool, refused in one line when its grid is not the prior's."""
    grid = (spec.grid_h, spec.grid_w)
    if keep.dtype != torch.bool or tuple(keep.shape[-2:]) != grid or keep.ndim not in (2, 3) \
            or (keep.ndim == 3 and len(keep) != count):
        raise VqgenError(f"keep mask: got {keep.dtype} of shape {tuple(keep.shape)}, but the prior's code grid is "
                         f"{grid[0]}x{grid[1]}; give a bool mask (h, w) or one per image ({count}, h, w)")
    return keep.expand(count, *grid).cpu() if keep.ndim == 2 else keep.cpu()


def _encode(tokenizer: VQVAE, images: Tensor, spec: GridSpec) -> Tensor:
    codes = tokenizer.encode(images)
    if tuple(codes.shape[1:]) != (spec.grid_h, spec.grid_w):
        raise VqgenError(f"images of {images.shape[2]}x{images.shape[3]} pixels give a {codes.shape[1]}x"
                         f"{codes.shape[2]} code grid, but the prior draws {spec.grid_h}x{spec.grid_w}; resize them "
                         f"to {tokenizer.config.image_size}x{tokenizer.config.image_size}")
    return codes.cpu()


def _complete_one(model: torch.nn.Module, draw: DrawBatch, spec: GridSpec, given: Given, label: int, b: int,
                  cfg: SampleConfig) -> Tensor:
    """cfg.n completions (n, h, w) of one image's codes (h, w): sample indices b*n .. b*n + n - 1."""
    indices = list(range(b * cfg.n, (b + 1) * cfg.n))
    many = Given(repeat(given.codes, "h w -> n h w", n=cfg.n), given.keep)
    labels = torch.full((cfg.n,), label, dtype=torch.long)
    return torch.cat([batch.codes for batch in generate(model, draw, spec, labels, indices, cfg, many)])


def _decode(tokenizer: VQVAE, codes: Tensor, batch_size: int) -> Tensor:
    """codes (N, h, w) -> images (N, C, H, W) on the CPU, batch_size at a time."""
    return torch.cat([tokenizer.decode_codes(part.to(tokenizer.device)).cpu() for part in codes.split(batch_size)])


def _blank(images: Tensor, masks: Tensor) -> Tensor:
    """images (B, C, H, W) with the pixels under dropped codes (masks (B, h, w) False) set to BLANK."""
    factor = images.shape[-1] // masks.shape[-1]
    pixels = masks.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)  # (B, H, W)
    return torch.where(rearrange(pixels, "b h w -> b 1 h w"), images, torch.full_like(images, BLANK))
