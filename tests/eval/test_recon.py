import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import DataConfig, load_images
from core.pixels import to_uint8
from eval.data_stats import data_batches
from eval.recon import reconstruct, reconstructions, save_side_by_side, save_top_only, tokenizer_metrics
from stage1_vqvae.evaluate import top_only_reconstruction
from stage1_vqvae.model import VQVAE, VQVAEConfig


@pytest.fixture
def tokenizer_dir(tmp_path):
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(base_channels=8, channel_mult=(1, 2), code_dim=8, codebook_size=16))
    model.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def test_tokenizer_metrics_ranges(tokenizer_dir):
    model = VQVAE.from_pretrained(tokenizer_dir).eval()
    m = tokenizer_metrics(model, DataConfig(max_images=6), batch_size=4)
    assert m["n_images"] == 6 and 0 < m["usage"] <= 100 and 1 <= m["perplexity"] <= 16
    assert -1 <= m["ssim"] <= 1 and m["psnr"] > 0


def test_each_image_sits_beside_its_reconstruction(tokenizer_dir, tmp_path):
    model = VQVAE.from_pretrained(tokenizer_dir).eval()
    data = DataConfig(max_images=4)
    save_side_by_side(model, data, tmp_path / "r.png", n=4, cols=2)
    grid = np.asarray(Image.open(tmp_path / "r.png"))[..., 0]
    val = load_images(data, "val")
    originals, recons = (torch.cat(list(x))[:, 0].numpy() for x in (data_batches(val, 4), reconstructions(model, val, 4)))
    assert grid.shape == (2 * 33 + 1, 4 * 33 + 1)  # 2 rows of 2 pairs, 32 px tiles, 1 px padding
    tile = lambda row, col: grid[1 + 33 * row : 33 * (row + 1), 1 + 33 * col : 33 * (col + 1)]  # noqa: E731
    for i in range(4):
        row, pair = divmod(i, 2)
        assert np.array_equal(tile(row, 2 * pair), originals[i])
        assert np.array_equal(tile(row, 2 * pair + 1), recons[i])


@pytest.mark.slow
def test_reconstruct_writes_png_and_metrics(tokenizer_dir, tmp_path):
    out = tmp_path / "recon"
    metrics = reconstruct(tokenizer_dir, DataConfig(max_images=4), out, n=2)
    assert (out / "reconstructions.png").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["rfid_n"] == 2 and saved["rfid"] >= 0 and metrics["psnr"] == saved["psnr"]


def test_cli_reconstruct_takes_rfid_n(tokenizer_dir, tmp_path, pngs, random_pth):
    from vqgen.cli import main

    pngs(tmp_path / "data" / "train", 2, 32, seed=1)
    pngs(tmp_path / "data" / "val", 5, 32, seed=2)
    out = tmp_path / "recon"
    rc = main(["reconstruct", "--tokenizer", str(tokenizer_dir), "--data", f"folder:{tmp_path / 'data'}",
               "--out", str(out), "--n", "2", "--rfid-n", "4", "--inception-weights", str(random_pth)])
    saved = json.loads((out / "metrics.json").read_text())
    assert rc == 0 and saved["rfid_n"] == 4 and saved["n_images"] == 5 and saved["weights_source"] == "pytorch-fid"


def test_a_two_level_tokenizer_gets_per_level_scores_and_its_top_only_rows(tmp_path, pngs):
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(base_channels=8, channel_mult=(1, 2), code_dim=8, codebook_size=16, levels=2,
                              top_quantizer={"codebook_size": 8})).eval()  # 8x8 top codes over 16x16 bottom codes
    pngs(tmp_path / "data" / "train", 2, 32, seed=1)
    pngs(tmp_path / "data" / "val", 5, 32, seed=2)
    data = DataConfig(spec=f"folder:{tmp_path / 'data'}")
    scores = tokenizer_metrics(model, data, batch_size=2)
    assert scores["n_images"] == 5 and "usage" not in scores
    assert all(0 < scores[f"{lv}/usage"] <= 100 and 1 <= scores[f"{lv}/perplexity"] <= k
               for lv, k in (("top", 8), ("bottom", 16)))
    save_top_only(model, data, tmp_path / "t.png", n=4, cols=2)
    grid = np.asarray(Image.open(tmp_path / "t.png"))[..., 0]
    assert grid.shape == (2 * 3 * 33 + 1, 2 * 33 + 1)  # 2 groups of 3 rows (images, full, top only) of 2 tiles
    val = load_images(data, "val")
    images = torch.stack([val[i]["image"] for i in range(4)])
    mode = int(torch.bincount(model.encode_levels(images)["bottom"].flatten()).argmax())  # over all 4 images
    expected = {"full": torch.cat(reconstructions(model, val, 4)),
                "top only": to_uint8(top_only_reconstruction(model, images, mode))}
    tile = lambda row, col: grid[1 + 33 * row : 33 * (row + 1), 1 + 33 * col : 33 * (col + 1)]  # noqa: E731
    for i in range(4):
        group, col = divmod(i, 2)
        assert np.array_equal(tile(3 * group + 1, col), expected["full"][i, 0].numpy())
        assert np.array_equal(tile(3 * group + 2, col), expected["top only"][i, 0].numpy())
