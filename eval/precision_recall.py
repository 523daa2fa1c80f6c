"""Precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et al. 2020) of
sample features against reference features, all four from one k-nearest-neighbour computation.

Each set's manifold is the union of balls around its points, each reaching the point's k-th nearest
neighbour in the same set (k = 3, the choice of both papers):
- precision: the share of samples inside the reference manifold (fidelity);
- recall: the share of reference points inside the sample manifold (diversity);
- density: the reference balls holding each sample, / k, averaged (1 for matching distributions, more
  where samples crowd around reference points);
- coverage: the share of reference points whose own ball holds a sample.

A point on a ball's boundary counts as inside for precision and recall (<=, as in the authors'
NVlabs/precision-recall and StyleGAN2-ADA's metrics/precision_recall.py) and as outside for density
and coverage (<, as in the authors' clovaai/generative-evaluation-prdc). Both papers score sets of
equal size; `equal_subsets` draws them. Distances are Euclidean in float64 (torch.cdist), taken a
block of rows at a time, so memory stays at CHUNK x N: 80 MB at N = 10,000, whatever the feature size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

K = 3
CHUNK = 1000
SUBSET_SEED = 0


class Manifold(NamedTuple):
    precision: float
    recall: float
    density: float
    coverage: float


def knn_radii(x: torch.Tensor, k: int = K, chunk: int = CHUNK) -> torch.Tensor:
    """(N,) distance from each row of x (N, F) to its k-th nearest other row."""
    # k + 1: each row is its own nearest neighbour, at distance 0.
    return torch.cat([torch.cdist(block, x).kthvalue(k + 1, dim=1).values for block in x.split(chunk)])


def manifold_scores(real: torch.Tensor, fake: torch.Tensor, k: int = K, chunk: int = CHUNK) -> Manifold:
    """Precision, recall, density and coverage of `fake` (M, F) against `real` (N, F); each set needs
    more than k rows."""
    real, fake = real.double(), fake.double()
    r_real, r_fake = knn_radii(real, k, chunk), knn_radii(fake, k, chunk)
    precise, crowding = torch.zeros(len(fake), dtype=torch.bool), torch.zeros(len(fake), dtype=torch.long)
    recalled = torch.zeros(len(real), dtype=torch.bool)
    nearest_fake = torch.full((len(real),), torch.inf, dtype=torch.float64)
    for start in range(0, len(fake), chunk):  # one (N, chunk) block of real-to-fake distances at a time
        block = slice(start, start + chunk)
        d = torch.cdist(real, fake[block])
        precise[block] = (d <= r_real[:, None]).any(dim=0)
        crowding[block] = (d < r_real[:, None]).sum(dim=0)
        recalled |= (d <= r_fake[None, block]).any(dim=1)
        nearest_fake = torch.minimum(nearest_fake, d.min(dim=1).values)
    return Manifold(precision=precise.double().mean().item(), recall=recalled.double().mean().item(),
                    density=crowding.sum().item() / (k * len(fake)),
                    coverage=(nearest_fake < r_real).double().mean().item())


def equal_subsets(real: torch.Tensor, fake: torch.Tensor, seed: int = SUBSET_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """The same number of rows from each side, min(N, M), drawn by a seeded permutation (a split may be
    sorted by class, so its first rows could be one class)."""
    m = min(len(real), len(fake))
    g = torch.Generator().manual_seed(seed)
    return real[torch.randperm(len(real), generator=g)[:m]], fake[torch.randperm(len(fake), generator=g)[:m]]
