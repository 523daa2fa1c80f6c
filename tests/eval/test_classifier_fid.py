import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import DataConfig, load_images
from core.errors import VqgenError
from core.pixels import to_uint8
from eval.classifier import Classifier, ClassifierConfig
from eval.classifier_fid import classifier_fid


def write_pngs(folder, images: torch.Tensor) -> None:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{i:03d}.png")


@pytest.fixture
def scored(tmp_path):
    """A random classifier, a folder data set of smooth blobs, and its val split written as PNGs."""
    torch.manual_seed(0)
    blobs = torch.nn.functional.avg_pool2d(torch.rand(80, 1, 32, 32), 5, stride=1, padding=2)
    write_pngs(tmp_path / "data", to_uint8(blobs * 4 - 2))
    data = DataConfig(spec=f"folder:{tmp_path / 'data'}", channels=1, val_fraction=0.5)
    val = torch.stack([load_images(data, "val")[i]["image"] for i in range(40)])
    write_pngs(tmp_path / "same", to_uint8(val))
    write_pngs(tmp_path / "noise", torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8))
    Classifier(ClassifierConfig(in_channels=1, widths=(8, 16), feature_dim=8)).save_pretrained(tmp_path / "clf")
    return lambda samples, n=0: classifier_fid(tmp_path / "clf", tmp_path / samples, data, n=n, split="val")


def test_classifier_fid_is_zero_for_the_reference_itself_and_large_for_noise(scored):
    same, noise = scored("same"), scored("noise")
    key = next(k for k in same if k.startswith("classifier FID"))
    assert abs(same[key]) < 1e-6  # an untrained CNN's features are small: noise scores ~0.07
    assert noise[key] > 1e-3
    assert same["classifier_n_samples"] == same["classifier_n_reference"] == 40
    is_key = next(k for k in same if k.startswith("classifier IS ("))
    assert all(1.0 <= r[is_key] <= 10.0 for r in (same, noise))


def test_classifier_fid_scores_the_first_n_samples(scored):
    result = scored("noise", n=25)
    assert result["classifier_n_samples"] == 25
    assert all(np.isfinite(v) for k, v in result.items() if k.startswith("classifier FID"))


@pytest.mark.parametrize("size, channels, message", [
    (16, 1, r"reference images are 32x32 grey, the samples 16x16 grey"),
    (32, 3, r"reference images are 32x32 grey, the samples 32x32 RGB"),
])
def test_samples_of_another_format_than_the_reference_are_refused(scored, tmp_path, pngs, size, channels, message):
    pngs(tmp_path / "other", 4, size, channels=channels)
    with pytest.raises(VqgenError, match=rf"data 'folder:.*' \(val split\): {message}; score samples made from"):
        scored("other")


def test_too_few_or_broken_samples_are_one_line(scored, tmp_path, pngs):
    pngs(tmp_path / "one", 1, 32)
    with pytest.raises(VqgenError, match="one: 1 image found; FID needs at least 2"):
        scored("one")
    (pngs(tmp_path / "broken", 3, 32) / "001.png").write_bytes(b"not a png")
    with pytest.raises(VqgenError, match="001.png: cannot read this image"):
        scored("broken")


def test_a_run_folder_scores_as_its_model_folder(scored, tmp_path):
    """The classifier may be given as its training run folder (RUN/model holds the files)."""
    from_model = scored("same")
    (tmp_path / "run").mkdir()
    (tmp_path / "clf").rename(tmp_path / "run" / "model")
    data = DataConfig(spec=f"folder:{tmp_path / 'data'}", channels=1, val_fraction=0.5)
    from_run = classifier_fid(tmp_path / "run", tmp_path / "same", data, split="val")
    assert from_run == from_model
    weights = (tmp_path / "run" / "model" / "model.safetensors").read_bytes()
    assert from_run["classifier_sha256"] == hashlib.sha256(weights).hexdigest()
