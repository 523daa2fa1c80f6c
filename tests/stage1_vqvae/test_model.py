import re

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel

import stage1_vqvae  # noqa: F401  (registers the Auto classes)
from stage1_vqvae.load import load_tokenizer, training_data
from stage1_vqvae.model import PRESETS, VQVAE, VQVAEConfig, straight_through_clamp
from vqgen.cli import main
from vqgen.data import DataConfig
from vqgen.errors import VqgenError

TINY = dict(base_channels=8, channel_mult=(1, 2), code_dim=8, codebook_size=16, image_size=16)


def tiny(**overrides) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig(**{**TINY, **overrides}))


def images(b: int = 4, c: int = 1, size: int = 16) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="factor2"),
        pytest.param({"channel_mult": (1, 1, 2), "attn_at_lowest": True}, id="factor4-attn"),
        pytest.param({"channel_mult": (1, 1, 1, 2), "in_channels": 3, "lookup_dim": 4, "ema": False}, id="factor8-rgb"),
        # The "large" preset's factor: 32px -> 2x2 codes.
        pytest.param({"channel_mult": (1, 1, 1, 1, 2), "image_size": 32, "lookup_dim": 4}, id="factor16"),
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
    assert set(out.losses) >= {"commitment"}
    ((out.reconstruction - x).square().mean() + sum(out.losses.values())).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # straight-through reaches the encoder


def test_encode_decode_equal_forward_in_eval_mode():
    model = tiny()
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


def test_save_and_reload_gives_identical_outputs(tmp_path):
    model = tiny()
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
        {"codebook_size": 1},
        {"beta": -0.1},
        {"codebook_decay": 1.0},
        {"lookup_dim": -1},
    ],
    ids=lambda bad: next(iter(bad)),
)
def test_bad_config_values_raise(bad):
    # Quantizer fields are reported by the quantizer under its own name (codebook_decay -> decay).
    with pytest.raises(ValueError, match=next(iter(bad)).removeprefix("codebook_")):
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
     ("num_res_blocks", 0, ">= 1"), ("code_dim", 0, ">= 1"), ("codebook_size", 1, ">= 2"), ("beta", -0.1, ">= 0"),
     ("beta", float("nan"), "a finite number"), ("codebook_decay", 1.0, r"in \[0, 1\)"), ("restart_after_steps", -1, ">= 0"),
     ("lookup_dim", -1, ">= 0"), ("codebook_size", "512", "int"), ("code_dim", 8.5, "int"), ("ema", "yes", "bool")],
)
def test_each_bad_setting_is_one_line_naming_its_key(key, value, rule):
    with pytest.raises(VqgenError, match=rf"^tokenizer config: '?model\.{key}'? must (be|have) {rule}") as err:
        VQVAEConfig(**{**TINY, key: value})
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)  # what transformers' config convention raises


def test_a_json_list_becomes_a_tuple_and_ints_become_floats():
    config = VQVAEConfig(**{**TINY, "channel_mult": [1, 2], "beta": 1})
    assert config.channel_mult == (1, 2) and isinstance(config.beta, float)


def test_a_saved_config_with_a_bad_value_is_one_line_naming_the_folder_and_key(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(config.read_text().replace('"codebook_size": 16', '"codebook_size": 1'))
    with pytest.raises(VqgenError, match=r"cannot load the tokenizer \(tokenizer config: model.codebook_size must be") as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("flag, rule", [("--model.codebook_size=1", "model.codebook_size must be >= 2"),
                                        ("--model.codebook_decay=1.5", r"model.codebook_decay must be in \[0, 1\)"),
                                        ("--model.channel_mult=[1,0]", "model.channel_mult must be at least 1 value")])
def test_the_command_line_refuses_a_bad_model_setting_before_any_work(tmp_path, capsys, flag, rule):
    (tmp_path / "images").mkdir()
    for i in range(4):
        Image.new("L", (16, 16), 40 * i).save(tmp_path / "images" / f"{i}.png")
    assert main(["train-tokenizer", "--data", f"folder:{tmp_path / 'images'}", "--data.image_size=16",
                 flag, "--out", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("vqgen train-tokenizer: error: tokenizer config: ") and re.search(rule, err)
    assert not (tmp_path / "tok").exists()
