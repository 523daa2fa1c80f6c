import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

import stage2_prior  # noqa: F401  (registers the Auto classes)
from core.errors import VqgenError
from stage2_prior.pixelcnn import PixelCNNConfig, PixelCNNPrior, build_pixelcnn
from vqgen.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from codes_folder import write_codes  # noqa: E402


def tiny(num_classes=3, grid=6, layers=6, kernel=3) -> PixelCNNPrior:
    torch.manual_seed(0)
    config = PixelCNNConfig(
        codebook_size=11, num_classes=num_classes, grid_h=grid, grid_w=grid,
        hidden_size=8, num_layers=layers, kernel_size=kernel, head_size=16,
    )
    return PixelCNNPrior(config).double()


def embedding_grads(model: PixelCNNPrior, codes, labels, i: int, j: int) -> torch.Tensor:
    """|d logits(i, j) / d embedding(i', j')| for every (i', j'), as an (h, w) map."""
    captured = {}

    def keep(_module, _inputs, out):
        out.retain_grad()
        captured["emb"] = out

    handle = model.embed.register_forward_hook(keep)
    try:
        logits = model(codes, labels).logits
        weights = torch.randn(logits.shape[-1], dtype=logits.dtype)
        (logits[0, i, j] * weights).sum().backward()
    finally:
        handle.remove()
    return captured["emb"].grad[0].abs().sum(-1)


@pytest.mark.parametrize("kernel,layers", [(3, 6), (5, 4)])
def test_causal_without_blind_spot(kernel, layers):
    model = tiny(kernel=kernel, layers=layers)
    codes = torch.randint(0, 11, (1, 6, 6))
    labels = torch.tensor([1])
    for i in range(6):
        for j in range(6):
            grad = embedding_grads(model, codes, labels, i, j).flatten()
            here = i * 6 + j
            assert torch.all(grad[here:] == 0), f"({i},{j}) sees a raster-later position"
            assert torch.all(grad[:here] > 0), f"({i},{j}) has a blind spot: {grad[:here]}"


def test_shapes_and_class_conditioning():
    model = tiny(num_classes=3)
    codes = torch.randint(0, 11, (4, 6, 6))
    out = model(codes, torch.tensor([0, 1, 2, 3]))
    assert out.logits.shape == (4, 6, 6, 11)
    same = model(codes[:1].expand(2, -1, -1), torch.tensor([0, 2])).logits
    assert not torch.allclose(same[0, 0, 0], same[1, 0, 0]), "the class bias must reach the first position"
    uncond = model(codes, None).logits
    assert torch.equal(uncond, model(codes, torch.full((4,), 3)).logits)


def test_save_and_reload_identical(tmp_path):
    model = tiny(num_classes=0).float().eval()
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "vqgen_pixelcnn"
    again = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(again, PixelCNNPrior)
    codes = torch.randint(0, 11, (2, 6, 6))
    with torch.no_grad():
        assert torch.equal(model(codes).logits, again(codes).logits)


@pytest.mark.parametrize(
    "overrides,match",
    [({"kernel_size": 4}, "kernel_size"), ({"hidden_size": 0}, "hidden_size"), ({"kernal_size": 3}, "kernal_size"),
     ({"codebook_size": 12}, "codebook_size"), ({}, "preset")],
)
def test_bad_config_is_one_line_error(overrides, match):
    preset = "nope" if not overrides else "tiny"
    with pytest.raises(VqgenError, match=match) as err:
        build_pixelcnn(preset, 11, 0, 6, 6, **overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "key, value, rule",
    [("codebook_size", 0, "be >= 1"), ("num_classes", -1, "be >= 0"), ("grid_h", 0, "be >= 1"), ("grid_w", 0, "be >= 1"),
     ("hidden_size", 0, "be >= 1"), ("num_layers", 0, "be >= 1"), ("kernel_size", 1, "be >= 3"), ("kernel_size", 4, "be odd"),
     ("head_size", 0, "be >= 1"), ("initializer_range", -0.1, "be >= 0"), ("initializer_range", float("nan"), "be a finite"),
     ("hidden_size", "8", "be int")],
)
def test_each_bad_setting_is_one_line_naming_its_key(key, value, rule):
    with pytest.raises(VqgenError, match=rf"^prior config: '?model\.{key}'? must {rule}") as err:
        PixelCNNConfig(**{key: value})
    assert "\n" not in str(err.value)


def test_the_command_line_refuses_a_bad_model_setting(tmp_path, capsys):
    codes = write_codes(tmp_path / "codes", n_train=8, n_val=4)
    capsys.readouterr()  # the writer's progress bars
    assert main(["train-prior", "--codes", str(codes), "--arch", "pixelcnn", "--preset", "tiny",
                 "--model.head_size=0", "--out", str(tmp_path / "prior")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqgen train-prior: error: prior config: model.head_size must be >= 1, got 0")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "prior").exists()
