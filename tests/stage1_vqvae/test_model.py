import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

import stage1_vqvae  # noqa: F401  (registers the Auto classes)
from core.code_grids import code_dtype
from core.data import DataConfig
from core.errors import VqgenError
from stage1_vqvae.load import load_tokenizer, training_data
from stage1_vqvae.model import (
    LEGACY_QUANTIZER_KEYS,
    PRESETS,
    VQVAE,
    VQVAEConfig,
    merge_settings,
    straight_through_clamp,
)
from stage1_vqvae.quantizers import MAX_CODEBOOK_SIZE
from vqgen.cli import main

TINY = dict(base_channels=8, channel_mult=(1, 2), code_dim=8, quantizer={"codebook_size": 16}, image_size=16)
FIXTURES = Path(__file__).parent / "fixtures"


def tiny(**overrides) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig(**{**TINY, **overrides}))


def vq(**settings) -> dict:
    return {"quantizer": {**TINY["quantizer"], **settings}}


def images(b: int = 4, c: int = 1, size: int = 16) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="factor2"),
        pytest.param({"channel_mult": (1, 1, 2), "attn_at_lowest": True}, id="factor4-attn"),
        pytest.param({"channel_mult": (1, 1, 1, 2), "in_channels": 3, **vq(lookup_dim=4, ema=False)}, id="factor8-rgb"),
        # The "large" preset's factor: 32px -> 2x2 codes.
        pytest.param({"channel_mult": (1, 1, 1, 1, 2), "image_size": 32, **vq(lookup_dim=4)}, id="factor16"),
        pytest.param({"quantizer": {"kind": "fsq", "levels": [5, 4, 3]}}, id="fsq"),
        pytest.param({"quantizer": {"kind": "lfq", "bits": 6}}, id="lfq"),
    ],
)
def test_shapes_range_and_gradients(overrides):
    model = tiny(**overrides)
    c, f, size = model.config.in_channels, model.downsample_factor, model.config.image_size
    x = images(c=c, size=size)
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert out.codes.shape == (4, size // f, size // f) and out.codes.dtype == torch.int64
    assert out.reconstruction.min() >= -1 and out.reconstruction.max() <= 1
    ((out.reconstruction - x).square().mean() + sum(out.losses.values())).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # straight-through reaches the encoder


@pytest.mark.parametrize("quantizer", [TINY["quantizer"], {"kind": "fsq", "levels": [5, 3]}, {"kind": "lfq", "bits": 12}],
                         ids=["vq", "fsq", "lfq"])
def test_encode_decode_equal_forward_in_eval_mode(quantizer):
    model = tiny(quantizer=quantizer)
    model(images())  # one training step: k-means init of the codebook
    model.eval()
    with torch.no_grad():
        out = model(images())
    codes = model.encode(images())
    assert torch.equal(codes, out.codes)
    assert torch.equal(model.decode_codes(codes), out.reconstruction)


def test_encode_never_changes_the_codebook():
    model = tiny()
    model(images())
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    model.train()
    model.encode(images(b=8))
    assert all(torch.equal(before[k], v) for k, v in model.quantizer.state_dict().items())
    assert model.quantizer.training


def test_straight_through_clamp_bounds_values_and_passes_gradients():
    x = torch.tensor([-3.0, -0.5, 0.25, 2.0], requires_grad=True)
    y = straight_through_clamp(x)
    assert torch.equal(y, x.detach().clamp(-1, 1))
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))


@pytest.mark.parametrize("quantizer", [TINY["quantizer"], {"kind": "fsq", "levels": [5, 3]}, {"kind": "lfq", "bits": 12}],
                         ids=["vq", "fsq", "lfq"])
def test_save_and_reload_gives_identical_outputs(tmp_path, quantizer):
    model = tiny(quantizer=quantizer)
    model(images())
    model.eval().save_pretrained(tmp_path)
    for reloaded in (VQVAE.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path), load_tokenizer(tmp_path)):
        assert isinstance(reloaded, VQVAE)
        reloaded.eval()
        with torch.no_grad():
            assert torch.equal(reloaded(images()).reconstruction, model(images()).reconstruction)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VQVAEConfig)
    assert AutoConfig.from_pretrained(tmp_path).channel_mult == (1, 2)


def test_load_tokenizer_accepts_a_run_folder(tmp_path):
    tiny().save_pretrained(tmp_path / "model")
    assert isinstance(load_tokenizer(tmp_path), VQVAE)


def test_load_tokenizer_errors_name_the_problem(tmp_path):
    with pytest.raises(VqgenError, match="config.json"):
        load_tokenizer(tmp_path / "nowhere")
    tiny().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(VqgenError, match="corrupt"):
        load_tokenizer(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(VqgenError, match="model.safetensors is missing"):
        load_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(VqgenError, match="model_type"):
        load_tokenizer(tmp_path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    tiny().save_pretrained(tmp_path)
    tiny(base_channels=16).config.save_pretrained(tmp_path)  # config.json no longer matches the weights
    with pytest.raises(VqgenError):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    "bad",
    [
        {"image_size": 17},  # not a multiple of the factor 2
        {"channel_mult": ()},
        {"channel_mult": (1, 0)},
        {"base_channels": 0},
        {"num_res_blocks": 0},
        {"code_dim": 0},
        {"in_channels": 0},
        vq(codebook_size=1),
        vq(beta=-0.1),
        vq(decay=1.0),
        vq(lookup_dim=-1),
    ],
    ids=lambda bad: [*bad.get("quantizer", bad)][-1],
)
def test_bad_config_values_raise(bad):
    with pytest.raises(ValueError, match=[*bad.get("quantizer", bad)][-1]):
        VQVAEConfig(**{**TINY, **bad})


def test_wrong_inputs_are_user_errors():
    model = tiny()
    with pytest.raises(VqgenError, match="multiples of 2"):
        model.encode(images(size=15)[:, :, :15, :15])
    with pytest.raises(VqgenError, match="channels|\\(B, 1"):
        model.encode(images(c=3))
    with pytest.raises(VqgenError, match="K=16"):
        model.decode_codes(torch.full((1, 8, 8), 16))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_a_consistent_config(name):
    cfg = VQVAEConfig(**PRESETS[name])
    assert cfg.grid_size * cfg.downsample_factor == cfg.image_size


def test_training_data_reads_the_run_or_model_folder(tmp_path):
    model_dir = tmp_path / "model"
    tiny().save_pretrained(model_dir)
    with pytest.raises(VqgenError, match=r"vqgen_tokenizer.json: not found.*--data"):
        training_data(tmp_path)
    (model_dir / "vqgen_tokenizer.json").write_text('{"data": {"spec": "cifar10", "image_size": 16, "channels": 3}}')
    expected = DataConfig(spec="cifar10", image_size=16, channels=3)
    assert training_data(tmp_path) == training_data(model_dir) == expected
    (model_dir / "vqgen_tokenizer.json").write_text('{"data": {"image_sise": 16}}')
    with pytest.raises(VqgenError, match="image_sise"):
        training_data(tmp_path)


@pytest.mark.parametrize(
    "key, value, rule",
    [("in_channels", 0, ">= 1"), ("image_size", 0, ">= 1"), ("image_size", 17, "a multiple of the downsampling factor 2"),
     ("base_channels", 0, ">= 1"), ("channel_mult", (1, 0), "at least 1 value"), ("channel_mult", (1,) * 7, "1 to 6"),
     ("num_res_blocks", 0, ">= 1"), ("code_dim", 0, ">= 1"), ("code_dim", 8.5, "int"), ("quantizer", "fsq", "dict")],
)
def test_each_bad_setting_is_one_line_naming_its_key(key, value, rule):
    with pytest.raises(VqgenError, match=rf"^tokenizer config: '?model\.{key}'? must (be|have) {rule}") as err:
        VQVAEConfig(**{**TINY, key: value})
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)  # what transformers' config convention raises


@pytest.mark.parametrize(
    "quantizer, key, rule",
    [({"codebook_size": 1}, "codebook_size", " must be >= 2"), ({"beta": -0.1}, "beta", " must be >= 0"),
     ({"beta": float("nan")}, "beta", " must be a finite number"), ({"decay": 1.0}, "decay", r" must be in \[0, 1\)"),
     ({"restart_after_steps": -1}, "restart_after_steps", " must be >= 0"), ({"lookup_dim": -1}, "lookup_dim", " must be >= 0"),
     ({"eps": 0}, "eps", " must be > 0"), ({"kmeans_iters": 0}, "kmeans_iters", " must be >= 1"),
     ({"usage_window": 0}, "usage_window", " must be >= 1"), ({"codebook_size": "512"}, "codebook_size", " must be int"),
     ({"ema": "yes"}, "ema", " must be bool"),
     ({"kind": "fsq", "levels": [8, 1, 5]}, "levels", " must be at least 1 value\\(s\\), each >= 3"),
     ({"kind": "fsq", "levels": [8, 2]}, "levels", " must be at least 1 value\\(s\\), each >= 3"),
     ({"kind": "fsq", "levels": []}, "levels", " must be at least 1 value"),
     ({"kind": "fsq", "levels": [8] * 11}, "levels", r"=\[8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8\] makes K = 8589934592 codes, more "
      r"than the 2\*\*32 that stored codes \(uint32\) and the prior's vocabulary can hold; lower model.quantizer.levels$"),
     ({"kind": "lfq", "bits": 33}, "bits", r"=33 makes K = 8589934592 codes.*; lower model.quantizer.bits$"),
     ({"kind": "lfq", "bits": 0}, "bits", " must be >= 1"),
     ({"kind": "lfq", "entropy_temperature": 0}, "entropy_temperature", " must be > 0"),
     ({"kind": "bsq"}, "kind", r"='bsq' is unknown; use one of vq, fsq, lfq$"),
     ({"levels": [8, 5]}, "levels", r" is not a setting of the 'vq' quantizer \(its settings: .*\); set "
      r"model.quantizer.kind or remove the key$"),
     ({"kind": "lfq", "codebook_size": 1024}, "codebook_size", " is not a setting of the 'lfq' quantizer")],
)
def test_each_bad_quantizer_setting_is_one_line_naming_its_key(quantizer, key, rule):
    with pytest.raises(VqgenError, match=rf"^tokenizer config: '?model\.quantizer\.{key}'?{rule}") as err:
        VQVAEConfig(**{**TINY, "quantizer": quantizer})
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_the_largest_codebook_is_what_stored_codes_hold():
    assert np.iinfo(np.dtype(code_dtype(MAX_CODEBOOK_SIZE))).max == MAX_CODEBOOK_SIZE - 1
    assert VQVAEConfig(quantizer={"kind": "lfq", "bits": 32}).codebook_size == MAX_CODEBOOK_SIZE


def test_a_json_list_becomes_a_tuple_and_ints_become_floats():
    config = VQVAEConfig(**{**TINY, "channel_mult": [1, 2], **vq(beta=1)})
    assert config.channel_mult == (1, 2) and isinstance(config.quantizer["beta"], float)
    fsq = VQVAEConfig(quantizer={"kind": "fsq", "levels": [8, 5, 5, 5]})
    assert fsq.quantizer_settings().levels == (8, 5, 5, 5) and fsq.codebook_size == 1000


def test_the_config_spells_out_every_quantizer_setting():
    config = VQVAEConfig(quantizer={"kind": "lfq", "bits": 12})
    assert config.quantizer == {"kind": "lfq", "usage_window": 100, "bits": 12, "beta": 0.25, "entropy_weight": 0.1,
                                "entropy_temperature": 0.01, "entropy_group_bits": 12}
    assert VQVAEConfig(quantizer=config.quantizer).quantizer == config.quantizer


def test_a_saved_config_with_a_bad_value_is_one_line_naming_the_folder_and_key(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(config.read_text().replace('"codebook_size": 16', '"codebook_size": 1'))
    with pytest.raises(VqgenError, match=r"cannot load the tokenizer \(tokenizer config: model.quantizer.codebook_size "
                                         r"must be") as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["legacy_vq_ema", "legacy_vq_learned"])
def test_a_folder_written_before_model_quantizer_loads_and_gives_the_same_outputs(name):
    folder = FIXTURES / name
    old = json.loads((folder / "config.json").read_text())
    assert "quantizer" not in old and set(LEGACY_QUANTIZER_KEYS) <= set(old)
    model = load_tokenizer(folder)  # refuses missing or unexpected weights
    expected = load_file(folder / "expected.safetensors")
    assert model.config.quantizer["kind"] == "vq" and model.config.codebook_size == old["codebook_size"]
    assert model.config.quantizer["decay"] == old["codebook_decay"]
    with torch.no_grad():
        out = model(expected["images"])
    assert torch.equal(out.codes, expected["codes"]) and torch.equal(out.reconstruction, expected["reconstruction"])
    assert torch.equal(model.decode_codes(out.codes), expected["decoded"])


@pytest.mark.parametrize("overrides", [{}, vq(ema=False, lookup_dim=4, restart_after_steps=3, beta=0.5)])
def test_a_config_json_in_the_old_format_loads_as_the_same_tokenizer(tmp_path, overrides):
    """config.json rewritten with the top-level quantizer keys vqgen wrote before model.quantizer."""
    model = tiny(**overrides)
    model(images())
    model.eval().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    quantizer = config.pop("quantizer")
    config |= {old: quantizer[new] for old, new in LEGACY_QUANTIZER_KEYS.items()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.config.quantizer == model.config.quantizer
    with torch.no_grad():
        assert torch.equal(reloaded(images()).reconstruction, model(images()).reconstruction)
    with pytest.raises(VqgenError, match=r"model.quantizer and the old top-level quantizer keys \(codebook_size\) are "
                                         r"both set; move those keys into model.quantizer"):
        VQVAEConfig(quantizer={"kind": "vq"}, codebook_size=16)


def test_a_preset_quantizer_merges_with_overrides_of_its_kind_only():
    base = PRESETS["base"]
    vq_beta = VQVAEConfig(**merge_settings(base, {"quantizer": {"beta": 0.5}})).quantizer
    assert vq_beta["codebook_size"] == 1024 and vq_beta["beta"] == 0.5
    assert VQVAEConfig(**merge_settings(base, {"quantizer": {"kind": "vq", "beta": 0.5}})).quantizer == vq_beta
    fsq = merge_settings(base, {"quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]}})
    assert VQVAEConfig(**fsq).codebook_size == 1000 and fsq["base_channels"] == 64


@pytest.mark.parametrize("flags, rule", [
    (["--model.quantizer.codebook_size=1"], "model.quantizer.codebook_size must be >= 2"),
    (["--model.quantizer.decay=1.5"], r"model.quantizer.decay must be in \[0, 1\)"),
    (["--model.channel_mult=[1,0]"], "model.channel_mult must be at least 1 value"),
    (["--model.quantizer.kind=fsq", "--model.quantizer.levels=[8,1]"], "model.quantizer.levels must be"),
    (["--model.quantizer.kind=lfq", "--model.quantizer.bits=40"], "model.quantizer.bits=40 makes K"),
    (["--model.quantizer.kind=sq"], "model.quantizer.kind='sq' is unknown; use one of vq, fsq, lfq"),
    (["--model.codebook_size=1024"], r"moved into model.quantizer \(model.codebook_size -> model.quantizer.codebook_size\)"),
])
def test_the_command_line_refuses_a_bad_model_setting_before_any_work(tmp_path, capsys, flags, rule):
    (tmp_path / "images").mkdir()
    for i in range(4):
        Image.new("L", (16, 16), 40 * i).save(tmp_path / "images" / f"{i}.png")
    assert main(["train-tokenizer", "--data", f"folder:{tmp_path / 'images'}", "--data.image_size=16",
                 *flags, "--out", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("vqgen train-tokenizer: error: tokenizer config") and re.search(rule, err)
    assert not (tmp_path / "tok").exists()
