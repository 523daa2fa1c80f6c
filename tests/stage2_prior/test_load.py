"""Loading a saved prior: a model folder or its run folder, every failure one line naming the folder."""


import pytest
import torch

from core.errors import VqgenError
from stage2_prior.load import load_prior, prior_folder
from tests.tiny_generator import GRID, K, save_prior, tiny_prior

ARCHS = ["gpt", "pixelcnn", "maskgit"]


@pytest.mark.parametrize("arch", ARCHS)
def test_a_model_folder_and_its_run_folder_load_the_same_prior(tmp_path, arch):
    save_prior(tmp_path / "model", None, arch=arch)
    model = tiny_prior(arch)  # the same weights
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
    save_prior(tmp_path / "model", None, arch=arch)
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
    save_prior(tmp_path / "model", None)
    meta = tmp_path / "model" / "vqgen_prior.json"
    meta.write_text(meta.read_text().replace('"arch": "gpt"', '"arch": "diffusion"'))
    with pytest.raises(VqgenError, match="arch: unknown architecture 'diffusion'; choose one of gpt, pixelcnn, maskgit") as err:
        load_prior(tmp_path)
    assert str(meta) in str(err.value) and "\n" not in str(err.value)
