"""Reference statistics on disk: written and read back, checked before use, and their output path
checked before any Inception work."""

import json
import os
import tracemalloc

import numpy as np
import pytest
import torch

from core.data import DataConfig
from core.errors import VqgenError
from eval.data_stats import protocol
from eval.fid import fid, fid_ref
from eval.inception import find_weights
from eval.reference import check_ref_out, load_ref, save_ref
from eval.scores import stats_of


def features(n=50, seed=0, dim=2048):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def spatial(n=50, seed=1):
    return features(n, seed, dim=2023)  # 7 channels of mixed_6/conv, 17 x 17


def sidecar_for(weights, size, channels, n=50):
    """The sidecar `vqgen fid-ref` writes for `weights` and images of that size and channels."""
    source = find_weights(weights)
    return {"network": "TF Inception 2015-12-05 pool3 (2048-d)", "weights_source": source.kind,
            "weights_path": str(source.path), "weights_sha": source.sha, "resize": source.resize, "n": n,
            "split": "test", "data": {"spec": "folder:x", "image_size": size, "channels": channels},
            "class_counts": None}


@pytest.fixture
def no_weights(tmp_path):
    """A weight file that is not there: loading the network would fail with its own error."""
    return tmp_path / "absent" / "pt_inception-2015-12-05-00000000.pth"


def folder_data(root, pngs, n_test=4, size=16):
    pngs(root / "train", 2, size, seed=1)
    pngs(root / "test", n_test, size, seed=2)
    return DataConfig(spec=f"folder:{root}", image_size=size)


def test_npz_round_trip(tmp_path):
    stats = stats_of(features(), {"n": 50, "resize": "x"}, spatial())
    save_ref(tmp_path / "ref.npz", stats)
    back = load_ref(tmp_path / "ref.npz")
    for key in ("mu", "sigma", "features", "mu_s", "sigma_s"):
        np.testing.assert_array_equal(getattr(back, key), getattr(stats, key))
    assert back.mu.dtype == back.sigma_s.dtype == np.float64 and back.features.dtype == np.float32
    assert back.meta == stats.meta
    assert sorted(np.load(tmp_path / "ref.npz").files) == ["features", "mu", "mu_s", "sigma", "sigma_s"]


def test_third_party_npz_gives_mu_and_sigma_only(tmp_path):
    full = stats_of(features(60), {})
    np.savez(tmp_path / "pf.npz", mu=full.mu, sigma=full.sigma.astype(np.float32))  # pytorch-fid --save-stats keys
    back = load_ref(tmp_path / "pf.npz")
    assert back.features is None and back.meta == {}
    np.testing.assert_array_equal(back.mu, full.mu)
    np.testing.assert_allclose(back.sigma, full.sigma, rtol=1e-6, atol=1e-6)
    np.savez(tmp_path / "bad.npz", m=full.mu)
    with pytest.raises(VqgenError, match="needs 'mu' and 'sigma'"):
        load_ref(tmp_path / "bad.npz")


def test_adm_reference_batch_reads_its_statistics_not_its_images(tmp_path):
    full = stats_of(features(60), {}, spatial(60))
    # An ADM reference batch (guided-diffusion evaluations/): arr_0 holds the images (there ~2 GB),
    # mu_s/sigma_s the spatial statistics for sFID. Here 200 MB of images, compressed on disk.
    images = np.zeros((1024, 256, 256, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "VIRTUAL_ref.npz", arr_0=images, mu=full.mu, sigma=full.sigma,
                        mu_s=full.mu_s, sigma_s=full.sigma_s)
    tracemalloc.start()
    back = load_ref(tmp_path / "VIRTUAL_ref.npz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 120_000_000  # sigma and sigma_s are 66 MB; arr_0 (200 MB) was never read
    for key in ("mu", "sigma", "mu_s", "sigma_s"):
        np.testing.assert_array_equal(getattr(back, key), getattr(full, key))
    assert back.features is None


def _broken(stats, damage):
    mu, sigma, feats = stats.mu.copy(), stats.sigma.copy(), stats.features.copy()
    if damage == "mu (1, 2048)":
        mu = mu[None]
    elif damage == "mu of 64 features":
        mu = mu[:64]
    elif damage == "sigma NaN":
        sigma[3, 3] = np.nan
    elif damage == "mu inf":
        mu[0] = np.inf
    elif damage == "sigma not symmetric":
        sigma[0, 1] += 1.0
    elif damage == "negative variance":
        sigma[5, 5] = -1.0
    elif damage == "features of 64":
        feats = feats[:, :64]
    elif damage == "features NaN":
        feats[0, 0] = np.nan
    elif damage == "mu strings":
        mu = mu.astype(str)
    return {"mu": mu, "sigma": sigma, "features": feats}


@pytest.mark.parametrize("damage, message", [
    ("mu (1, 2048)", r"'mu' has shape \(1, 2048\), Inception statistics need \(2048,\)"),
    ("mu of 64 features", r"'mu' has shape \(64,\)"),
    ("sigma NaN", "'sigma' holds NaN or inf"),
    ("mu inf", "'mu' holds NaN or inf"),
    ("sigma not symmetric", "'sigma' is not a covariance"),
    ("negative variance", "'sigma' is not a covariance"),
    ("features of 64", r"'features' has shape \(50, 64\)"),
    ("features NaN", "'features' holds NaN or inf"),
    ("mu strings", "'mu' holds <U32, not real numbers"),
])
def test_a_broken_reference_is_refused_naming_the_file_and_the_fix(tmp_path, damage, message):
    np.savez(tmp_path / "ref.npz", **_broken(stats_of(features(), {}), damage))
    with pytest.raises(VqgenError, match=rf"ref.npz: {message}.*make it again with `vqgen fid-ref`"):
        load_ref(tmp_path / "ref.npz")


@pytest.mark.parametrize("arrays, message", [
    ({"mu_s": np.ones(4), "sigma_s": np.eye(4)}, r"'mu_s' has shape \(4,\), Inception statistics need \(2023,\)"),
    ({"sigma_s": np.eye(2023)}, "has one of 'mu_s' and 'sigma_s' without the other"),
    ({"mu_s": np.zeros(2023), "sigma_s": np.triu(np.ones((2023, 2023)))}, "'sigma_s' is not a covariance"),
])
def test_broken_spatial_statistics_are_refused(tmp_path, arrays, message):
    stats = stats_of(features(), {})
    np.savez(tmp_path / "ref.npz", mu=stats.mu, sigma=stats.sigma, **arrays)
    with pytest.raises(VqgenError, match=rf"ref.npz: {message}.*make it again with `vqgen fid-ref`"):
        load_ref(tmp_path / "ref.npz")


def test_a_sidecar_that_is_not_ours_is_refused(tmp_path):
    stats = stats_of(features(), {})
    np.savez(tmp_path / "ref.npz", mu=stats.mu, sigma=stats.sigma)
    (tmp_path / "ref.json").write_text("[1, 2]")
    with pytest.raises(VqgenError, match=r"ref.json: not the sidecar of reference statistics"):
        load_ref(tmp_path / "ref.npz")


def test_ref_made_at_another_size_or_channels_is_refused(tmp_path, pngs, random_pth):
    stats = stats_of(features(), {})
    np.savez(tmp_path / "ref.npz", mu=stats.mu, sigma=stats.sigma)
    samples = pngs(tmp_path / "samples", 3, 16)
    for size, channels, made in ((32, 1, "32x32 grey"), (16, 3, "16x16 RGB")):
        (tmp_path / "ref.json").write_text(json.dumps(sidecar_for(random_pth, size, channels)))
        with pytest.raises(VqgenError, match=rf"ref.npz: reference images are {made}, the samples 16x16 grey; "
                                             r"make the reference at the samples' format \(vqgen fid-ref "
                                             r"--data.image_size=16 --data.channels=1\)"):
            fid(samples, tmp_path / "ref.npz", weights=random_pth)


@pytest.mark.parametrize("layer, what", [("Conv2d_1a_3x3.conv.weight", "features"), ("fc.weight", "logits")])
def test_nan_features_are_refused_naming_the_weights(tmp_path, pngs, random_pth, layer, what):
    state = torch.load(random_pth, weights_only=True)
    state[layer].fill_(float("nan"))
    broken = tmp_path / "w" / "pt_inception-2015-12-05-0badbad0.pth"
    broken.parent.mkdir()
    torch.save(state, broken)
    stats = stats_of(features(), {})
    np.savez(tmp_path / "pf.npz", mu=stats.mu, sigma=stats.sigma)
    with pytest.raises(VqgenError, match=rf"samples: the Inception {what} of .*0badbad0.pth hold NaN or inf for 2 "
                                         r"of 2 images; the weight file is damaged"):
        fid(pngs(tmp_path / "samples", 2, 16), tmp_path / "pf.npz", weights=broken)


@pytest.mark.parametrize("n, message", [
    (1, "1 reference images asked for: FID needs at least 2"),
    (-1, "-1 reference images asked for"),
    (5, r"\(test split\): 5 images asked for, 4 there; ask for at most 4 \(0: all\)"),
])
def test_fid_ref_refuses_a_count_it_cannot_honour_before_any_work(tmp_path, pngs, no_weights, n, message):
    data = folder_data(tmp_path / "data", pngs)
    with pytest.raises(VqgenError, match=message):
        fid_ref(data, "test", tmp_path / "ref.npz", weights=no_weights, n=n)
    assert not (tmp_path / "ref.npz").exists() and not (tmp_path / "ref.json").exists()


def test_fid_ref_refuses_a_split_of_one_image(tmp_path, pngs, no_weights):
    data = folder_data(tmp_path / "data", pngs, n_test=1)
    with pytest.raises(VqgenError, match=r"\(test split\): 1 image found; FID needs at least 2"):
        fid_ref(data, "test", tmp_path / "ref.npz", weights=no_weights)


@pytest.mark.parametrize("setup, message", [
    ("foreign npz", r"ref.npz: exists and is not reference statistics from `vqgen fid-ref`"),
    ("foreign sidecar", r"ref.json: exists and is not the sidecar of reference statistics"),
    ("folder", r"ref.npz: is a folder, and reference statistics from `vqgen fid-ref` is a file"),
    ("parent is a file", r"file: is a file, not a folder, so .*sub cannot be made"),
    ("read-only", r"ref.npz: is read-only; make it writable"),
    ("not .npz", r"ref.txt: reference statistics are an .npz file"),
])
def test_fid_ref_output_is_checked_before_any_work(tmp_path, pngs, no_weights, setup, message):
    data = folder_data(tmp_path / "data", pngs)
    out = tmp_path / "ref.npz"
    if setup == "foreign npz":
        out.write_bytes(b"someone's file")
    elif setup == "foreign sidecar":
        (tmp_path / "ref.json").write_text('{"mine": 1}')
    elif setup == "folder":
        out.mkdir()
    elif setup == "parent is a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "sub" / "ref.npz"
    elif setup == "read-only":
        save_ref(out, stats_of(features(), sidecar_for(None, 16, 1)))
        out.chmod(0o444)
    elif setup == "not .npz":
        out = tmp_path / "ref.txt"
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(VqgenError, match=message):
        fid_ref(data, "test", out, weights=no_weights)  # the weights are never looked for
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_an_earlier_reference_is_replaced(tmp_path, pngs, random_pth):
    data = folder_data(tmp_path / "data", pngs)
    out = tmp_path / "ref.npz"
    save_ref(out, stats_of(features(), sidecar_for(random_pth, 16, 1)))
    check_ref_out(out)
    stats = fid_ref(data, "test", out, weights=random_pth, n=3)
    assert load_ref(out).meta == stats.meta and stats.meta["n"] == 3
    assert stats.meta["data"]["channels"] == 1  # as loaded, not 0 ("as stored"): samples are checked against it
    assert stats.meta == {**protocol(find_weights(random_pth)), **{
        k: stats.meta[k] for k in ("n", "data", "split", "class_counts")}}


def test_a_failed_late_write_is_one_line(tmp_path):
    out = tmp_path / "ref.npz"
    stats = stats_of(features(), {"n": 50})
    (tmp_path / "ref.json").mkdir()  # taken by a folder after the check (another process)
    with pytest.raises(VqgenError, match=r"ref.json: the sidecar of the reference statistics could not be written \(Is a directory\)"):
        save_ref(out, stats)
    assert not out.exists()
    assert os.listdir(tmp_path) == ["ref.json"]  # no temporary file left behind


def test_a_second_writer_of_the_same_reference_is_refused(tmp_path, pngs, no_weights, held_elsewhere):
    data = folder_data(tmp_path / "data", pngs)
    pid = held_elsewhere(tmp_path / "ref.npz")
    with pytest.raises(VqgenError, match=rf"ref.npz: another vqgen process \(pid {pid}\) is writing it"):
        fid_ref(data, "test", tmp_path / "ref.npz", weights=no_weights)
    assert not (tmp_path / "ref.npz").exists() and not (tmp_path / "ref.json").exists()
