"""Nearest-code search and k-means for the VQ codebook.

A lean CPU path: one fused `addmm` per block of rows, no (N, K) one-hot or distance matrices.
k-means++ seeding (Arthur & Vassilvitskii 2007), then Lloyd's iterations, as the k-means init of
Jukebox (Dhariwal et al. 2020, §3.2) and vector-quantize-pytorch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Rows per distance block: a (4096, K) float block stays small enough to live in cache and is
# reused across blocks instead of materialising the whole (N, K) matrix.
_BLOCK_ROWS = 4096


class KMeansResult(NamedTuple):
    centroids: Tensor  # (K, d)
    counts: Tensor  # (K,) vectors assigned to each centroid in the last iteration


@torch.no_grad()
def nearest_code(z: Tensor, codebook: Tensor, cosine: bool = False) -> Tensor:
    """Index of the nearest code for each row: z (N, d), codebook (K, d) -> (N,) int64.

    argmin ||z - e||^2 = argmax (z.e - ||e||^2 / 2): ||z||^2 is constant per row and skipped, so
    each block is one fused addmm. For l2-normalised vectors it is argmax z.e.
    """
    bias = torch.zeros_like(codebook[:, 0]) if cosine else codebook.square().sum(1).mul_(-0.5)
    codebook_t = codebook.t()
    out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
    rows = min(_BLOCK_ROWS, z.shape[0])
    scores, best = z.new_empty(rows, codebook.shape[0]), z.new_empty(rows)
    for start in range(0, z.shape[0], rows):
        block = z[start : start + rows]
        n = block.shape[0]
        torch.addmm(bias, block, codebook_t, out=scores[:n])
        # max(dim) is about twice as fast as argmax(dim) on CPU (torch 2.x) for the same indices.
        torch.max(scores[:n], dim=1, out=(best[:n], out[start : start + n]))
    return out


def _kmeanspp_seeds(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k rows of x (N, d) by k-means++: each next seed is drawn with probability proportional to its
    squared distance from the seeds so far, so that Lloyd's iterations do not start with two seeds
    in one cluster and leave another cluster uncovered.

    For large k the seeds are drawn k // 64 at a time (as k-means|| oversamples per round), so
    there are at most ~64 sequential rounds instead of k.
    """
    per_round = max(1, k // 64)
    x_sq = x.square().sum(1)
    new = x[torch.randint(x.shape[0], (1,), generator=generator, device=x.device)]
    seeds, closest = [new], torch.full_like(x_sq, float("inf"))
    for drawn in range(1, k + 1, per_round):
        # squared distances to the newest seeds only: ||x||^2 - 2 x.s + ||s||^2
        dist = torch.addmm(new.square().sum(1), x, new.t(), alpha=-2).add_(x_sq.unsqueeze(1))
        torch.minimum(closest, dist.clamp_(min=0).min(1).values, out=closest)
        want = min(per_round, k - drawn)
        if want <= 0:
            break
        weights = closest if bool((closest > 0).sum() >= want) else torch.ones_like(closest)
        new = x[torch.multinomial(weights, want, generator=generator)]
        seeds.append(new)
    return torch.cat(seeds)


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int, cosine: bool, generator: torch.Generator) -> KMeansResult:
    """Lloyd's k-means on x (N, d) from k-means++ seeds; empty clusters keep their centroid."""
    centroids = _kmeanspp_seeds(x, k, generator)
    counts = torch.zeros(k, dtype=x.dtype, device=x.device)
    for _ in range(iters):
        assign = nearest_code(x, centroids, cosine)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        means = sums / counts.clamp(min=1).unsqueeze(1)
        if cosine:
            means = F.normalize(means, dim=1)
        centroids = torch.where(counts.unsqueeze(1) > 0, means, centroids)
    return KMeansResult(centroids, counts)
