import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from eval.fid import RefStats, fid, fid_ref, frechet_distance, kernel_distance, load_ref, save_ref, stats_of
from vqgen.data import DataConfig
from vqgen.errors import VqgenError


def scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


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


def test_npz_round_trip(tmp_path):
    stats = stats_of(random_features(n=50, d=8), {"n": 50, "resize": "x"})
    save_ref(tmp_path / "ref.npz", stats)
    back = load_ref(tmp_path / "ref.npz")
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    np.testing.assert_array_equal(back.features, stats.features)
    assert back.mu.dtype == np.float64 and back.features.dtype == np.float32 and back.meta == stats.meta
    assert sorted(np.load(tmp_path / "ref.npz").files) == ["features", "mu", "sigma"]


def test_third_party_npz_gives_fid_only(tmp_path):
    f = random_features(n=60, d=8)
    full = stats_of(f, {})
    np.savez(tmp_path / "pf.npz", mu=full.mu, sigma=full.sigma)  # what pytorch-fid --save-stats writes
    back = load_ref(tmp_path / "pf.npz")
    assert back.features is None and back.meta == {}
    assert frechet_distance(back, f) == pytest.approx(frechet_distance(full, f), abs=1e-8)
    np.savez(tmp_path / "bad.npz", m=full.mu)
    with pytest.raises(VqgenError, match="needs 'mu' and 'sigma'"):
        load_ref(tmp_path / "bad.npz")


@pytest.mark.slow
def test_fid_end_to_end_on_a_few_images(tmp_path):
    data = DataConfig(max_images=3)
    stats = fid_ref(data, "test", tmp_path / "ref.npz")
    assert isinstance(stats, RefStats) and stats.features.shape == (3, 2048)
    assert sum(stats.meta["class_counts"]) == 3 and stats.meta["split"] == "test"
    samples = tmp_path / "samples"
    samples.mkdir()
    for i, image in enumerate(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))):
        Image.fromarray(image.numpy()).save(samples / f"{i:05d}.png")
    result = fid(samples, tmp_path / "ref.npz")
    assert result["fid"] > 0 and result["n_samples"] == 3 and "kid_mean" in result
    assert result["is"] == f"IS: unavailable (no Inception logits in {result['weights_source']})"
