"""What one set of Inception statistics scores against another: FID, sFID, KID, precision, recall,
density and coverage (and IS, which needs the samples alone). The samples and the real-data floor
(eval/floor.py) are scored by the same `scores`, so their numbers are read side by side.

The Frechet distance is the closed form on mu/sigma; KID and IS are torchmetrics'
(`KernelInceptionDistance`, `InceptionScore`), fed features that Inception computed once; the
nearest-neighbour metrics are eval/precision_recall.py's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from eval.precision_recall import K, equal_subsets, manifold_scores
from eval.reference import RefStats

KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # Binkowski et al. (2018), as torchmetrics and torch-fidelity
KID_MIN_IMAGES = 4  # the unbiased estimator needs two images per subset on each side
MANIFOLD_MIN_IMAGES = K + 1  # a k-th nearest neighbour other than the point itself


def stats_of(features: torch.Tensor, meta: dict[str, Any], spatial: torch.Tensor | None = None) -> RefStats:
    """mu/sigma (float64) of features (N, F), the features kept; and of spatial features where given."""
    f = features.double().numpy()
    stats = RefStats(f.mean(0), np.cov(f, rowvar=False), features.float().numpy(), meta)
    if spatial is not None:
        s = spatial.double().numpy()
        stats.mu_s, stats.sigma_s = s.mean(0), np.cov(s, rowvar=False)
    return stats


def frechet(mu_1: np.ndarray, sigma_1: np.ndarray, mu_2: np.ndarray, sigma_2: np.ndarray) -> float:
    """|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^1/2), the trace of the root taken as the sum of the
    roots of the eigenvalues of S_1 S_2 (torchmetrics' eigenvalue form, finite where scipy's sqrtm of a
    singular product is not)."""
    # Written out: torchmetrics keeps this closed form private behind a metric that wants both
    # sides' raw features, and a reference (pytorch-fid's, ADM's) may hold only mu and sigma.
    mu_1, sigma_1, mu_2, sigma_2 = (torch.from_numpy(x) for x in (mu_1, sigma_1, mu_2, sigma_2))
    root_trace = torch.linalg.eigvals(sigma_1 @ sigma_2).sqrt().real.sum()
    return float((mu_1 - mu_2).square().sum() + sigma_1.trace() + sigma_2.trace() - 2 * root_trace)


def frechet_distance(ref: RefStats, features: torch.Tensor) -> float:
    """FID of features (N, F) against the reference's mu/sigma."""
    fake = stats_of(features, {})
    return frechet(ref.mu, ref.sigma, fake.mu, fake.sigma)


class _Precomputed(nn.Module):
    """Hands already-extracted features to a torchmetrics metric, so Inception runs once for
    FID, KID and IS together (each metric would otherwise run its own copy of the network)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def kernel_distance(ref_features: torch.Tensor, features: torch.Tensor, seed: int = 0,
                    subset_size: int | None = None) -> tuple[float, float]:
    """KID (mean, std over subsets): unbiased MMD^2 with the kernel (x.y/F + 1)^3.

    Subsets hold 1000 images, or half the smaller set when it has fewer than 2000: subsets as large
    as the set are all the same set, and their std (0) would say nothing about the estimate's spread.
    """
    size = subset_size or min(KID_SUBSET_SIZE, len(ref_features) // 2, len(features) // 2)
    metric = KernelInceptionDistance(feature=_Precomputed(features.shape[1]), subsets=KID_SUBSETS, subset_size=size)
    metric.update(ref_features.double(), real=True)
    metric.update(features.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws subsets from the global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS (mean, std over splits) of logits (N, 1008), Salimans et al. (2016)."""
    metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=splits)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]):  # torchmetrics shuffles before splitting
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _too_few(ref: RefStats, fake: RefStats, needed: int) -> str:
    n_ref, n_fake = len(ref.features), len(fake.features)
    if min(n_ref, n_fake) >= needed:
        return ""
    return f"{n_ref} reference and {n_fake} sample images; needs at least {needed} of each"


def _kid(ref: RefStats, fake: RefStats, ref_name: str) -> dict[str, Any]:
    """kid_mean/kid_std, or a `kid` line saying why not: the unbiased estimator needs two images
    per subset on each side (one would divide by m(m-1) = 0)."""
    if ref.features is None:
        return {"kid": f"KID: unavailable ({ref_name} holds only mu/sigma, no reference features)"}
    if few := _too_few(ref, fake, KID_MIN_IMAGES):
        return {"kid": f"KID: unavailable ({few})"}
    mean, std = kernel_distance(torch.from_numpy(ref.features), torch.from_numpy(fake.features))
    return {"kid_mean": mean, "kid_std": std}


def _sfid(ref: RefStats, fake: RefStats, ref_name: str) -> dict[str, Any]:
    """sFID (Nash et al. 2021, the ADM evaluator's): FID on 7 channels of mixed_6/conv, 17x17 each."""
    if ref.mu_s is None or fake.mu_s is None:
        return {"sfid": f"sFID: unavailable ({ref_name} holds no spatial statistics mu_s/sigma_s; make it "
                        "again with `vqgen fid-ref`, or pass --ref SPEC)"}
    return {"sfid": frechet(ref.mu_s, ref.sigma_s, fake.mu_s, fake.sigma_s)}


def _manifold(ref: RefStats, fake: RefStats, ref_name: str) -> dict[str, Any]:
    """precision, recall, density and coverage on equal-sized sets (pr_n images a side), or one
    `precision_recall` line saying why not."""
    unavailable = "precision/recall, density/coverage: unavailable"
    if ref.features is None:
        return {"precision_recall": f"{unavailable} ({ref_name} holds only mu/sigma, no reference features)"}
    if few := _too_few(ref, fake, MANIFOLD_MIN_IMAGES):
        return {"precision_recall": f"{unavailable} ({few}: the {K}-th nearest neighbour)"}
    real, samples = equal_subsets(torch.from_numpy(ref.features), torch.from_numpy(fake.features))
    return {**manifold_scores(real, samples)._asdict(), "pr_n": len(real), "pr_k": K}


def scores(ref: RefStats, fake: RefStats, ref_name: str) -> dict[str, Any]:
    """FID, sFID, KID and the nearest-neighbour metrics of `fake` (statistics with features) against
    `ref`; a metric the reference cannot give is one 'unavailable' line naming `ref_name`."""
    return {"fid": frechet(ref.mu, ref.sigma, fake.mu, fake.sigma), **_sfid(ref, fake, ref_name),
            **_kid(ref, fake, ref_name), **_manifold(ref, fake, ref_name)}
