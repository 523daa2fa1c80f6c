"""The score formulas: the Frechet distance against scipy and torchmetrics, KID against the
unbiased MMD, sFID on the spatial statistics, and the 'unavailable' lines where a reference cannot
give a score."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from eval.reference import RefStats
from eval.scores import frechet, frechet_distance, kernel_distance, scores, stats_of


def scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


class Identity(torch.nn.Module):
    """Features in, features out: the `feature` network torchmetrics' FID metric wants."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def random_features(n=400, d=32, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64) + shift


def test_fid_of_a_set_with_itself_is_zero():
    f = random_features()
    assert abs(frechet_distance(stats_of(f, {}), f)) < 1e-6


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_fid_matches_scipy(shift):
    a, b = random_features(seed=1), random_features(seed=2, shift=shift)
    ref = stats_of(a, {})
    bb = b.numpy()
    expected = scipy_frechet(ref.mu, ref.sigma, bb.mean(0), np.cov(bb, rowvar=False))
    assert frechet_distance(ref, b) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("n, d", [(400, 32), (20, 64)])  # full-rank and singular covariances
def test_fid_equals_torchmetrics_fed_both_feature_sets(n, d):
    real, fake = random_features(n, d, seed=5), random_features(n + 7, d, seed=6, shift=0.3)
    metric = FrechetInceptionDistance(feature=Identity(d))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert frechet_distance(stats_of(real, {}), fake) == pytest.approx(float(metric.compute()), rel=1e-7)


def test_fid_grows_with_noise():
    a = random_features(seed=3)
    ref = stats_of(a, {})
    g = torch.Generator().manual_seed(4)
    scores = [frechet_distance(ref, a + s * torch.randn(a.shape, generator=g, dtype=a.dtype)) for s in (0.1, 1, 3)]
    assert scores[0] < scores[1] < scores[2]


def unbiased_mmd(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = lambda K: (K.sum() - np.trace(K)) / (m * (m - 1))  # noqa: E731
    return off(kxx) + off(kyy) - 2 * kxy.mean()


def test_kid_matches_unbiased_mmd():
    x, y = random_features(n=20, d=8, seed=5).numpy(), random_features(n=20, d=8, seed=6, shift=0.3).numpy()
    # With subset size = n every subset is the whole set (a permutation), so the std is 0.
    mean, std = kernel_distance(torch.from_numpy(x), torch.from_numpy(y), subset_size=20)
    assert mean == pytest.approx(unbiased_mmd(x, y), rel=1e-6)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_kid_std_is_informative_on_small_sets():
    x, y = random_features(n=40, d=8, seed=5), random_features(n=40, d=8, seed=6, shift=0.3)
    mean, std = kernel_distance(x, y)  # 20-image subsets of 40
    assert std > 0
    assert abs(mean - unbiased_mmd(x.numpy(), y.numpy())) < 4 * std


def stats_with_spatial(n, seed, shift=0.0):
    # Few dimensions: the formulas take any F (Inception's 2048 and 2023 make each eigen-solve seconds).
    return stats_of(random_features(n, 32, seed, shift), {}, random_features(n, 24, seed + 100, shift))


def test_sfid_is_the_frechet_distance_of_the_spatial_statistics():
    ref, fake = stats_with_spatial(40, 1), stats_with_spatial(30, 2, shift=0.2)
    result = scores(ref, fake, "ref.npz")
    assert result["sfid"] == frechet(ref.mu_s, ref.sigma_s, fake.mu_s, fake.sigma_s) > 0
    assert result["fid"] == frechet(ref.mu, ref.sigma, fake.mu, fake.sigma) != result["sfid"]
    assert result["pr_n"] == 30 and result["pr_k"] == 3
    assert all(0 <= result[k] <= 1 for k in ("precision", "recall", "coverage")) and result["density"] >= 0


def test_a_reference_without_features_or_spatial_statistics_says_what_is_unavailable():
    full, fake = stats_with_spatial(40, 1), stats_with_spatial(30, 2)
    bare = RefStats(full.mu, full.sigma)  # pytorch-fid's --save-stats: mu and sigma only
    result = scores(bare, fake, "pf.npz")
    assert np.isfinite(result["fid"])
    assert result["sfid"].startswith("sFID: unavailable (pf.npz holds no spatial statistics mu_s/sigma_s")
    assert result["kid"] == "KID: unavailable (pf.npz holds only mu/sigma, no reference features)"
    assert result["precision_recall"] == ("precision/recall, density/coverage: unavailable (pf.npz holds only "
                                          "mu/sigma, no reference features)")
    assert not {"kid_mean", "precision", "recall", "density", "coverage"} & set(result)


def test_too_few_images_for_the_third_neighbour_is_unavailable():
    result = scores(stats_with_spatial(10, 1), stats_with_spatial(3, 2), "ref.npz")
    assert result["precision_recall"].endswith("(10 reference and 3 sample images; needs at least 4 of each: "
                                               "the 3-th nearest neighbour)")
    assert "precision" not in result
