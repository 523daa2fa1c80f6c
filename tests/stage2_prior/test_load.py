"""Loading a saved prior: a model folder or its run folder, every failure one line naming the folder."""

from pathlib import Path

import pytest
import torch

from core.errors import VqgenError
from stage2_prior.gpt import build_gpt
from stage2_prior.load import PriorMeta, load_prior, prior_folder, write_prior_meta
from stage2_prior.maskgit import build_maskgit
from stage2_prior.pixelcnn import build_pixelcnn

K, GRID, N = 8, 2, 2
ARCHS = ["gpt", "pixelcnn", "maskgit"]


def save_prior(folder: Path, arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "gpt":
        model = build_gpt("demo", K, N, GRID, GRID, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2)
    elif arch == "maskgit":
        model = build_maskgit("demo", K, N, GRID, GRID, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2)
    else:
        model = build_pixelcnn("demo", K, N, GRID, GRID, hidden_size=8, num_layers=2, head_size=8)
    model.eval().save_pretrained(folder)
    write_prior_meta(folder, PriorMeta(arch, K, GRID, GRID, N, K + N, "0" * 64, codes_meta={}))
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_a_model_folder_and_its_run_folder_load_the_same_prior(tmp_path, arch):
    model = save_prior(tmp_path / "model", arch)
    assert prior_folder(tmp_path) == prior_folder(tmp_path / "model") == tmp_path / "model"
    codes = torch.randint(0, K, (2, GRID, GRID))
    for path in (tmp_path, tmp_path / "model"):
        prior = load_prior(path)
        assert prior.meta.arch == arch and not prior.model.training
        if arch in ("gpt", "maskgit"):
            ids = torch.randint(0, K, (2, GRID * GRID))
            torch.testing.assert_close(prior.model(input_ids=ids).logits, model(input_ids=ids).logits)
        else:
            torch.testing.assert_close(prior.model(codes).logits, model(codes).logits)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "damage, message",
    [("corrupt weights", "cannot load the prior"), ("no config", "config.json is missing"),
     ("corrupt config", "config.json: not valid JSON"), ("other model", "model_type is 'vqgen_vqvae'"),
     ("no metadata", "vqgen_prior.json: not found"), ("bad value", "cannot load the prior")],
)
def test_a_damaged_prior_folder_is_one_line_naming_it(tmp_path, arch, damage, message):
    save_prior(tmp_path / "model", arch)
    folder = tmp_path / "model"
    config = folder / "config.json"
    if damage == "corrupt weights":
        (folder / "model.safetensors").write_bytes(b"not safetensors")
    elif damage == "no config":
        config.unlink()
    elif damage == "corrupt config":
        config.write_text("{")
    elif damage == "other model":
        config.write_text('{"model_type": "vqgen_vqvae"}')
    elif damage == "no metadata":
        (folder / "vqgen_prior.json").unlink()
    else:  # a size no config may hold: the GPT's own check is transformers', the PixelCNN's is ours
        key = "num_layers" if arch == "pixelcnn" else "num_attention_heads"
        config.write_text(config.read_text().replace(f'"{key}": ', f'"{key}": -').replace("--", "-"))
    with pytest.raises(VqgenError, match=message) as err:
        load_prior(tmp_path)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_arch_in_the_metadata_is_one_line_listing_the_registry(tmp_path):
    save_prior(tmp_path / "model", "gpt")
    meta = tmp_path / "model" / "vqgen_prior.json"
    meta.write_text(meta.read_text().replace('"arch": "gpt"', '"arch": "diffusion"'))
    with pytest.raises(VqgenError, match="arch: unknown architecture 'diffusion'; choose one of gpt, pixelcnn, maskgit") as err:
        load_prior(tmp_path)
    assert str(meta) in str(err.value) and "\n" not in str(err.value)
