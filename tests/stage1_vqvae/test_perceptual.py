"""LPIPS's plumbing with a randomly initialised VGG16: finding the weights, loading them, refusing Inception.
The ImageNet weights themselves cannot be downloaded here, and no test needs them."""

import pytest
import torch

from core.errors import VqgenError
from stage1_vqvae.perceptual import (
    ENV,
    LPIPS,
    VGG16_FILE,
    build_perceptual,
    check_network,
    find_vgg16_weights,
    load_vgg16_features,
)


@pytest.fixture(scope="module")
def random_lpips() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS(None)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache of our own, and no $VQGEN_LPIPS_WEIGHTS."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(ENV, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def vgg16_file(path, lpips: LPIPS, seed: int = 1):
    """A file laid out as torchvision's vgg16-397923af.pth (features.<i>.weight|bias), random values."""
    generator = torch.Generator().manual_seed(seed)
    state = {f"features.{key.split('.', 1)[1]}": torch.randn(t.shape, generator=generator)
             for key, t in lpips.lpips.net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state | {"classifier.0.weight": torch.zeros(2, 2)}, path)
    return state


def test_distance_is_zero_for_equal_images_grey_as_rgb_and_differentiable(random_lpips):
    x, y = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.equal(random_lpips(x, x), torch.zeros(2))
    torch.testing.assert_close(random_lpips(x, y), random_lpips(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))
    y.requires_grad_(True)
    random_lpips(x, y).sum().backward()
    assert y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in random_lpips.parameters())
    assert not random_lpips.train().lpips.training  # frozen in eval mode: no dropout in its heads


def test_weights_are_found_in_the_hub_cache_and_loaded_into_the_backbone(hub, random_lpips):
    saved = vgg16_file(hub / VGG16_FILE, random_lpips)
    assert find_vgg16_weights() == hub / VGG16_FILE
    loaded = build_perceptual()
    for key, tensor in loaded.lpips.net.state_dict().items():
        assert torch.equal(tensor, saved[f"features.{key.split('.', 1)[1]}"]), key


def test_the_config_path_comes_before_the_environment_and_the_cache(hub, tmp_path, monkeypatch, random_lpips):
    for name in ("config.pth", "env.pth"):
        vgg16_file(tmp_path / name, random_lpips)
    vgg16_file(hub / VGG16_FILE, random_lpips)
    monkeypatch.setenv(ENV, str(tmp_path / "env.pth"))
    assert find_vgg16_weights(str(tmp_path / "config.pth")) == tmp_path / "config.pth"
    assert find_vgg16_weights() == tmp_path / "env.pth"


def test_missing_weights_say_where_to_put_them_in_one_line(hub):
    with pytest.raises(VqgenError) as refused:
        find_vgg16_weights()
    message = str(refused.value)
    assert "\n" not in message and str(hub / VGG16_FILE) in message
    assert "tokenizer.loss.perceptual_weights" in message and ENV in message and "perceptual_weight=0" in message


def test_a_wrong_file_is_one_line(tmp_path, random_lpips):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(VqgenError, match="not a readable weights file"):
        load_vgg16_features(tmp_path / "junk.pth")
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "short.pth")
    with pytest.raises(VqgenError, match="lack or misshape features.0.bias, features.0.weight"):
        LPIPS(load_vgg16_features(tmp_path / "short.pth"))
    with pytest.raises(VqgenError, match="no such file"):
        find_vgg16_weights(str(tmp_path / "absent.pth"))


@pytest.mark.parametrize("network", ["inception", "InceptionV3", "fid_inception"])
def test_the_fid_inception_network_is_refused_as_a_backbone(network):
    with pytest.raises(VqgenError, match="Inception network that scores FID is never a training loss") as refused:
        check_network(network)
    assert "\n" not in str(refused.value)
    check_network("vgg")
    with pytest.raises(VqgenError, match="alexnet is unknown; use vgg"):
        check_network("alexnet")


def test_the_fid_inception_weights_are_refused_by_name_and_by_content(tmp_path):
    named = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    named.write_bytes(b"")
    with pytest.raises(VqgenError, match="Inception network that scores FID"):
        find_vgg16_weights(str(named))
    torch.save({"Mixed_5b.branch1x1.conv.weight": torch.zeros(1)}, tmp_path / "renamed.pth")
    with pytest.raises(VqgenError, match="Inception network that scores FID"):
        load_vgg16_features(tmp_path / "renamed.pth")
