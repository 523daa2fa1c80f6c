"""model.quantizer: from YAML and flags to the module (stage1_vqvae/quantizers/registry.py)."""

import dataclasses

import pytest

from core.config import load_config
from core.errors import VqgenError
from stage1_vqvae.model import VQVAE, VQVAEConfig
from stage1_vqvae.quantizers import (
    KINDS,
    FiniteScalarQuantizer,
    FSQConfig,
    LookupFreeQuantizer,
    VectorQuantizer,
    quantizer_settings,
    settings_dict,
)
from stage1_vqvae.train import TokenizerRunConfig, model_settings


def tokenizer_config(tmp_path, yaml_text: str | None, flags: list[str]) -> VQVAEConfig:
    path = None
    if yaml_text is not None:
        path = tmp_path / "tokenizer.yaml"
        path.write_text(yaml_text)
    return VQVAEConfig(**model_settings(load_config(TokenizerRunConfig, path, flags)))


def test_yaml_then_flags_reach_the_quantizer(tmp_path):
    config = tokenizer_config(tmp_path, "model:\n  code_dim: 4\n  quantizer: {kind: fsq}\n",
                              ["--model.quantizer.levels=[8,5,5,5]"])
    assert config.code_dim == 4 and config.codebook_size == 1000
    assert config.quantizer_settings() == FSQConfig(levels=(8, 5, 5, 5))
    assert isinstance(VQVAE(config).quantizer, FiniteScalarQuantizer)


def test_flags_alone_reach_every_setting(tmp_path):
    config = tokenizer_config(tmp_path, None, ["--model.quantizer.kind=lfq", "--model.quantizer.bits=12",
                                               "--model.quantizer.entropy_weight=0.2", "--model.quantizer.usage_window=7"])
    quantizer = VQVAE(config).quantizer
    assert isinstance(quantizer, LookupFreeQuantizer) and quantizer.codebook_size == 4096
    assert quantizer.config.entropy_weight == 0.2 and quantizer.usage_window == 7
    config = tokenizer_config(tmp_path, None, ["--model.quantizer.eps=1e-4", "--model.quantizer.kmeans_iters=3"])
    assert (config.quantizer["eps"], config.quantizer["kmeans_iters"]) == (1e-4, 3)


def test_a_preset_keeps_its_codebook_under_a_flag_of_the_same_kind(tmp_path):
    config = tokenizer_config(tmp_path, "preset: base\n", ["--model.quantizer.beta=0.5"])
    assert config.codebook_size == 1024 and config.quantizer["beta"] == 0.5
    config = tokenizer_config(tmp_path, "preset: base\n", ["--model.quantizer.kind=fsq"])
    assert config.quantizer == settings_dict(FSQConfig())  # the preset's VQ settings do not carry over


def test_restart_after_steps_is_declared_once_with_the_value_the_tokenizer_used():
    # Before model.quantizer, VQVAEConfig said 20 and passed it on; QuantizerConfig's 100 never reached the model.
    assert VQVAEConfig().quantizer["restart_after_steps"] == 20
    quantizer = VQVAE(VQVAEConfig()).quantizer
    assert isinstance(quantizer, VectorQuantizer) and quantizer.config.restart_after_steps == 20
    assert [name for name in vars(VQVAEConfig) if "restart" in name] == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_settings_round_trip_through_their_mapping(kind):
    settings = quantizer_settings({"kind": kind})
    assert quantizer_settings(settings_dict(settings)) == settings
    assert set(settings_dict(settings)) == {"kind"} | {f.name for f in dataclasses.fields(settings)}


def test_a_top_level_quantizer_key_in_yaml_names_its_new_place(tmp_path):
    with pytest.raises(VqgenError, match=r"model.lookup_dim -> model.quantizer.lookup_dim, "
                                         r"model.codebook_decay -> model.quantizer.decay\); move them there$"):
        tokenizer_config(tmp_path, "model:\n  lookup_dim: 8\n  codebook_decay: 0.9\n", [])
