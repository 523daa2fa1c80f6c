import hashlib
import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import DataConfig
from core.errors import VqgenError
from eval.data_stats import protocol
from eval.fid import check_protocol, fid, fid_ref, ref_data_config
from eval.inception import InceptionFeatures
from eval.reference import RefStats
from eval.samples import image_format
from vqgen.cli import main


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
    no_floor = f"real data: unavailable (data '{spec}' has 2 train images, fewer than the N = 4 samples)"
    printed = capsys.readouterr().out
    assert rc == 0 and "fid:" in printed and no_floor in printed  # the samples are scored all the same
    result = json.loads(out.read_text())
    data = result["reference_meta"]["data"]
    assert (data["image_size"], data["channels"], data["resize"]) == (24, 3, "pad")  # samples' size, --data.* given
    assert result["reference_meta"]["n"] == 4 and result["n_samples"] == 4
    assert all(math.isfinite(result[k]) for k in ("fid", "kid_mean", "is_mean"))  # pytorch-fid's file has logits
    report = out.with_suffix(".md").read_text()
    for needle in (f"| fid | {result['fid']:.4f} |", "## Protocol", "N = 4", f"reference data: {spec} at 24 px",
                   "weights: pytorch-fid", f"- {no_floor}"):
        assert needle in report
