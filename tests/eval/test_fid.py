import hashlib
import json
import logging
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torchmetrics.image.fid import FrechetInceptionDistance

from eval.data_stats import protocol
from eval.fid import check_protocol, fid, fid_ref, ref_data_config
from eval.inception import InceptionFeatures
from eval.reference import RefStats
from eval.samples import image_format
from eval.scores import frechet_distance, kernel_distance, stats_of
from vqgen.cli import main
from vqgen.data import DataConfig
from vqgen.errors import VqgenError


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


@pytest.mark.slow
def test_fid_end_to_end_on_a_few_images(tmp_path):
    data = DataConfig(max_images=4)
    stats = fid_ref(data, "test", tmp_path / "ref.npz")
    assert isinstance(stats, RefStats) and stats.features.shape == (4, 2048)
    assert sum(stats.meta["class_counts"]) == 4 and stats.meta["split"] == "test"
    samples = tmp_path / "samples"
    samples.mkdir()
    for i, image in enumerate(torch.randint(0, 256, (4, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))):
        Image.fromarray(image.numpy()).save(samples / f"{i:05d}.png")
    result = fid(samples, tmp_path / "ref.npz")
    assert result["fid"] > 0 and result["n_samples"] == 4 and math.isfinite(result["kid_mean"])
    assert result["is"] == f"IS: unavailable (no Inception logits in {result['weights_source']})"


@pytest.fixture(scope="module")
def helper_model():
    return InceptionFeatures(device="cpu")


def test_check_protocol_refuses_another_network_or_resize(helper_model, caplog):
    same = protocol(helper_model.weights)
    check_protocol(same, helper_model.weights, "ref.npz")
    for change in ({"weights_sha": "0" * 64, "weights_source": "pytorch-fid"}, {"resize": "PIL bicubic"}):
        with pytest.raises(VqgenError, match="ref.npz: made with .* pass the same --inception-weights"):
            check_protocol({**same, **change}, helper_model.weights, "ref.npz")
    with caplog.at_level(logging.WARNING):
        check_protocol({}, helper_model.weights, "pf.npz")
    assert "pf.npz: no JSON sidecar" in caplog.text


def folder_data(root, pngs, size=40):
    """A folder data set with train/ and test/ splits of RGB images."""
    pngs(root / "train", 2, size, channels=3, seed=1)
    pngs(root / "test", 4, size, channels=3, seed=2)
    return f"folder:{root}"


def test_fid_ref_sidecar_records_the_protocol(tmp_path, pngs, random_pth):
    spec = folder_data(tmp_path / "data", pngs)
    fid_ref(DataConfig(spec=spec, image_size=16), "test", tmp_path / "ref.npz", weights=random_pth, n=3)
    sidecar = json.loads((tmp_path / "ref.json").read_text())  # X.json beside X.npz
    assert sidecar["network"] == "TF Inception 2015-12-05 pool3 (2048-d)"
    assert sidecar["weights_source"] == "pytorch-fid" and sidecar["weights_path"] == str(random_pth)
    assert sidecar["weights_sha"] == hashlib.sha256(random_pth.read_bytes()).hexdigest()
    assert sidecar["resize"].startswith("torch F.interpolate bilinear (align_corners=False)")
    assert sidecar["n"] == 3 and sidecar["split"] == "test" and sidecar["class_counts"] is None
    assert sidecar["data"]["spec"] == spec and sidecar["data"]["image_size"] == 16
    # scoring with another network (fid-helper's, the default here) is refused before any work
    with pytest.raises(VqgenError, match="pass the same --inception-weights"):
        fid(pngs(tmp_path / "samples", 4, 16), tmp_path / "ref.npz")


def test_fid_with_a_third_party_npz_and_n(tmp_path, pngs, caplog):
    np.savez(tmp_path / "pf.npz", mu=np.zeros(2048), sigma=np.eye(2048))  # pytorch-fid --save-stats keys
    with caplog.at_level(logging.WARNING):
        result = fid(pngs(tmp_path / "samples", 3, 24), tmp_path / "pf.npz", n=2)
    assert result["n_samples"] == 2 and math.isfinite(result["fid"]) and result["fid"] > 0
    assert result["kid"].startswith("KID: unavailable") and "kid_mean" not in result
    assert result["is"] == "IS: unavailable (no Inception logits in fid-helper)"
    assert result["reference_meta"] == {} and "no JSON sidecar" in caplog.text


def test_ref_spec_is_loaded_at_the_samples_size(tmp_path, pngs):
    grey = image_format(pngs(tmp_path / "grey", 1, 24) / "000.png")
    rgb = image_format(pngs(tmp_path / "rgb", 1, 64, channels=3) / "000.png")
    assert (ref_data_config("mnist", grey).image_size, ref_data_config("mnist", grey).channels) == (24, 1)
    assert (ref_data_config("cifar10", rgb).image_size, ref_data_config("cifar10", rgb).channels) == (64, 3)
    given = ref_data_config("cifar10", rgb, {"image_size": 32, "max_images": 5})
    assert (given.image_size, given.channels, given.max_images, given.spec) == (32, 3, 5, "cifar10")
    with pytest.raises(VqgenError, match="unknown setting 'imagesize'"):
        ref_data_config("cifar10", rgb, {"imagesize": 32})
    Image.new("L", (20, 10)).save(tmp_path / "wide.png")
    with pytest.raises(VqgenError, match="samples are 20x10.*--data.image_size"):
        ref_data_config("cifar10", image_format(tmp_path / "wide.png"))


def test_cli_fid_against_a_spec_writes_json_and_markdown(tmp_path, pngs, random_pth, capsys):
    spec = folder_data(tmp_path / "data", pngs)
    samples = pngs(tmp_path / "samples", 4, 24)  # grey 24 px; the reference is RGB 40 px on disk
    out = tmp_path / "scores" / "fid.json"
    rc = main(["fid", "--samples", str(samples), "--ref", spec, "--inception-weights", str(random_pth),
               "--out", str(out), "--data.channels=3", "--data.resize=pad"])
    assert rc == 0 and "fid:" in capsys.readouterr().out
    result = json.loads(out.read_text())
    data = result["reference_meta"]["data"]
    assert (data["image_size"], data["channels"], data["resize"]) == (24, 3, "pad")  # samples' size, --data.* given
    assert result["reference_meta"]["n"] == 4 and result["n_samples"] == 4
    assert all(math.isfinite(result[k]) for k in ("fid", "kid_mean", "is_mean"))  # pytorch-fid's file has logits
    report = out.with_suffix(".md").read_text()
    for needle in (f"| fid | {result['fid']:.4f} |", "## Protocol", "N = 4", f"reference data: {spec} at 24 px",
                   "weights: pytorch-fid"):
        assert needle in report
