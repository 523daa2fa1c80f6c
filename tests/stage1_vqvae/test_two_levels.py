"""The two-level tokenizer (VQ-VAE-2, `model.levels: 2`): each level's grid, codes and meters, the
round trip through encode_levels/decode_levels, training with VQGAN's loss, saving and loading back,
the refusals, and one-level tokenizers left exactly as they were."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from core.data import DataConfig
from core.errors import VqgenError
from core.loop import TrainConfig, fit
from stage1_vqvae.evaluate import save_reconstruction_grid, tokenizer_scores, top_only_reconstruction
from stage1_vqvae.load import load_tokenizer
from stage1_vqvae.losses import AdversarialConfig, LossConfig
from stage1_vqvae.model import VQVAE, LevelSpec, VQVAEConfig
from stage1_vqvae.quantizers import code_perplexity
from stage1_vqvae.train import TokenizerRunConfig, TokenizerTask, model_settings
from vqgen.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "one_level_seeded" / "expected.safetensors"
TINY = dict(base_channels=8, channel_mult=(1, 2), code_dim=8, image_size=16, quantizer={"codebook_size": 16},
            levels=2, top_quantizer={"codebook_size": 8})


def tiny(**overrides) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig(**{**TINY, **overrides}))


def images(b: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def eval_output(model: VQVAE, x: torch.Tensor):
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("overrides, top, bottom", [
    ({}, (4, 8), (8, 16)),
    ({"top_factor": 4}, (2, 8), (8, 16)),
    ({"channel_mult": (1, 1, 2), "image_size": 32, "top_quantizer": {"kind": "fsq", "levels": [5, 3]}}, (4, 15), (8, 16)),
], ids=["factor2", "factor4", "fsq-top"])
def test_each_level_has_its_grid_and_codebook(overrides, top, bottom):
    model = tiny(**overrides)
    (top_side, top_k), (side, k) = top, bottom
    assert model.config.level_specs == [LevelSpec("top", top_side, top_side, top_k), LevelSpec("bottom", side, side, k)]
    x = images(size=model.config.image_size)
    out = model(x)
    assert out.reconstruction.shape == x.shape and out.codes is None
    assert list(out.levels) == ["top", "bottom"]
    for spec in model.config.level_specs:
        codes = out.levels[spec.name].indices
        assert codes.shape == (4, spec.grid_h, spec.grid_w) and codes.dtype == torch.int64
        assert 0 <= codes.min() and codes.max() < spec.codebook_size
    assert "bottom/commitment" in out.losses and {name.split("/")[0] for name in out.losses} <= {"top", "bottom"}


def test_encode_levels_then_decode_levels_is_forward_in_eval_mode():
    model = tiny()
    model(images())  # one training step: k-means init of both codebooks
    out = eval_output(model, images())
    codes = model.encode_levels(images())
    assert list(codes) == ["top", "bottom"]
    assert all(torch.equal(codes[level], out.levels[level].indices) for level in codes)
    assert torch.equal(model.decode_levels(codes), out.reconstruction)


def test_encode_levels_never_changes_the_codebooks():
    model = tiny()
    model(images())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.encode_levels(images(b=8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.quantizer.training and model.top_quantizer.training


def test_gradients_reach_both_encoders():
    model = tiny()
    out = model(images())
    ((out.reconstruction - images()).square().mean() + sum(out.losses.values())).backward()
    for name in ("encoder.conv_in", "top.encoder.conv_in", "top.decoder.conv_out", "top.fuse", "top.up"):
        assert model.get_submodule(name).weight.grad.abs().sum() > 0, name


def test_each_level_measures_its_own_codes():
    # No k-means init: random codebooks, so each level uses only some of its codes.
    model = tiny(quantizer={"codebook_size": 64, "kmeans_init": False}, top_quantizer={"codebook_size": 32})
    out = model(images())
    for level, k in (("top", 32), ("bottom", 64)):
        q = out.levels[level]
        counts = torch.bincount(q.indices.flatten(), minlength=k)
        assert float(q.usage) == pytest.approx(float((counts > 0).double().mean()))
        assert float(q.perplexity) == pytest.approx(float(code_perplexity(counts.double())), rel=1e-5)
    assert out.levels["top"].usage != out.levels["bottom"].usage


def test_scores_and_top_only_reconstructions_per_level(tmp_path):
    model = tiny()
    model(images())
    model.eval()
    scores = tokenizer_scores(model, [images(), images(b=2)])
    assert {"top/usage", "top/perplexity", "bottom/usage", "bottom/perplexity", "psnr", "ssim"} <= set(scores)
    assert "usage" not in scores and scores["n_images"] == 6
    top_only = top_only_reconstruction(model, images())
    codes = model.encode_levels(images())
    common = int(torch.bincount(codes["bottom"].flatten()).argmax())
    fixed = {"top": codes["top"], "bottom": torch.full_like(codes["bottom"], common)}
    assert torch.equal(top_only, model.decode_levels(fixed))
    assert not torch.equal(top_only, model.decode_levels(codes))
    path = tmp_path / "grid.png"
    save_reconstruction_grid(images() * 0.5 + 0.5, [top_only * 0.5 + 0.5] * 2, path, cols=2, layout="rows")
    # 2 rows of [originals, full, top only], each 2 tiles of 16 px, 1 px apart.
    assert Image.open(path).size == (1 + 2 * 17, 1 + 6 * 17)


def test_one_level_tokenizers_are_built_and_run_as_before_levels_existed():
    expected = load_file(FIXTURE)
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(base_channels=4, channel_mult=(1, 2), code_dim=4, quantizer={"codebook_size": 8},
                              image_size=8))
    assert not any(key.startswith("top") for key in model.state_dict())
    assert torch.equal(model(expected["images"]).losses["commitment"], expected["commitment"])
    for _ in range(2):
        model(expected["images"])
    out = eval_output(model, expected["images"])
    assert torch.equal(out.codes, expected["codes"]) and torch.equal(out.reconstruction, expected["reconstruction"])
    assert list(out.levels) == ["codes"] and model.config.level_specs == [LevelSpec("codes", 4, 4, 8)]


def test_a_two_level_run_trains_with_the_vqgan_loss_and_loads_back(tmp_path, fmnist_available):
    train = TrainConfig(steps=3, batch_size=8, lr=1e-3, warmup_steps=1, eval_every=3, save_every=3, log_every=1)
    adversarial = AdversarialConfig(weight=0.5, start=1, discriminator_channels=8, discriminator_layers=2)
    model = {"levels": 2, "quantizer": {"codebook_size": 32}, "top_quantizer": {"codebook_size": 16}}
    cfg = TokenizerRunConfig(data=DataConfig(image_size=16, max_images=32), preset="tiny", model=model,
                             loss=LossConfig(adversarial=adversarial), train=train)
    task = TokenizerTask(cfg)
    model_dir = fit(task, cfg.train, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "train/loss" in r][-1]
    assert {"train/top/usage", "train/bottom/usage", "train/top/perplexity", "train/top/commitment",
            "train/bottom/commitment", "train/g_loss", "train/d_loss"} <= set(last)
    val = next(r for r in rows if "val/psnr" in r)
    assert 0 < val["val/top/usage"] <= 100 and 0 < val["val/bottom/usage"] <= 100
    assert (tmp_path / "recon_step_3.png").is_file()
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.config.level_specs == task.model.config.level_specs
    x = torch.stack([task.val_set[i]["image"] for i in range(4)])
    assert torch.equal(eval_output(reloaded, x).reconstruction, eval_output(task.model, x).reconstruction)
    assert VQVAE.from_pretrained(model_dir).config.top_quantizer == task.model.config.top_quantizer


@pytest.mark.parametrize("overrides, message", [
    ({"levels": 3}, r"model.levels must be one of 1, 2, got 3"),
    ({"image_size": 14}, r"model.image_size must be a multiple of the downsampling factor 4 \(2 from "
                         r"model.channel_mult times model.top_factor=2\), got 14"),
    ({"levels": 1}, r"model.top_quantizer applies only with model.levels=2"),
    ({"levels": 1, "top_quantizer": {}, "top_factor": 4}, r"model.top_factor applies only with model.levels=2"),
    ({"top_quantizer": {"codebook_size": 1}}, r"model.top_quantizer.codebook_size must be >= 2"),
    ({"top_quantizer": {"bits": 4}}, r"model.top_quantizer.bits is not a setting of the 'vq' quantizer .*; set "
                                     r"model.top_quantizer.kind or remove the key"),
])
def test_bad_two_level_settings_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(VqgenError, match=rf"^tokenizer config: {message}") as err:
        VQVAEConfig(**{**TINY, **overrides})
    assert "\n" not in str(err.value)


def test_an_image_size_the_top_grid_does_not_divide_is_refused_before_any_data_is_read():
    cfg = TokenizerRunConfig(data=DataConfig(spec="folder:/nowhere", image_size=20), preset="tiny",
                             model={"levels": 2, "top_factor": 4})
    with pytest.raises(VqgenError, match=r"data.image_size=20 is not a multiple of the tokenizer's downsampling factor "
                                         r"8; use a multiple of 8 or fewer model.channel_mult entries, a smaller "
                                         r"model.top_factor or model.levels=1$"):
        model_settings(cfg)


def test_single_grid_methods_refuse_a_two_level_tokenizer_in_one_line():
    model = tiny()
    grids = r"this is a two-level tokenizer \(top 4x4 K=8, bottom 8x8 K=16\).*use encode_levels/decode_levels"
    for call, what in ((lambda: model.encode(images()), "encode"),
                       (lambda: model.decode_codes(torch.zeros(1, 8, 8, dtype=torch.long)), "decode_codes"),
                       (lambda: model.config.grid_size, "config.grid_size"),
                       (lambda: model.config.codebook_size, "config.codebook_size")):
        with pytest.raises(VqgenError, match=rf"^{what}: {grids}") as err:
            call()
        assert "\n" not in str(err.value)


def test_decode_levels_refuses_codes_that_do_not_fit():
    model = tiny()
    top, bottom = torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 8, 8, dtype=torch.long)
    with pytest.raises(VqgenError, match="got codes for bottom, but this tokenizer's levels are top, bottom"):
        model.decode_levels({"bottom": bottom})
    with pytest.raises(VqgenError, match="level top: codes span .* K=8 codes"):
        model.decode_levels({"top": top + 8, "bottom": bottom})
    with pytest.raises(VqgenError, match=r"top codes \(2, 2, 2\) and bottom codes \(2, 8, 8\) do not fit together"):
        model.decode_levels({"top": top[:, :2, :2], "bottom": bottom})


def test_the_command_line_refuses_two_level_settings_before_any_work(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    for i in range(4):
        Image.new("L", (20, 20), 40 * i).save(tmp_path / "images" / f"{i}.png")
    args = ["train-tokenizer", "--data", f"folder:{tmp_path / 'images'}", "--data.image_size=18", "--preset=tiny",
            "--train.batch_size=2", "--model.levels=2", "--model.top_quantizer.codebook_size=64", "--out", str(tmp_path / "tok")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "data.image_size=18 is not a multiple of" in err
    assert not (tmp_path / "tok").exists()
