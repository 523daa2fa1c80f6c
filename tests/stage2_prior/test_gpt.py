import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig

from core.errors import VqgenError
from stage2_prior.gpt import FAMILIES, GPT2_NAMES, GPT_PRESETS, build_gpt, count_parameters, gpt_code_logits
from stage2_prior.vocab import PriorVocab

SMALL = {"llama": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
         "gpt2": {"n_embd": 32, "n_inner": 64, "n_layer": 2, "n_head": 4}}


def tiny(family="llama", K=13, N=3, h=3, w=4, **extra):
    torch.manual_seed(0)
    return build_gpt("tiny", K, N, h, w, family=family, **{**SMALL[family], **extra}).eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("N", [0, 3])
def test_vocab_and_sequence_layout(family, N):
    model = tiny(family, K=13, N=N)
    vocab = PriorVocab(13, N)
    assert model.config.vocab_size == 13 + N + 1 == vocab.vocab_size
    assert model.config.bos_token_id == vocab.uncond_token == 13 + N
    positions = model.config.max_position_embeddings if family == "llama" else model.config.n_positions
    assert positions == 3 * 4 + 1
    assert model.generation_config.suppress_tokens == list(range(13, 13 + N + 1))
    if family == "llama":
        assert model.config._attn_implementation == "sdpa"
    codes = torch.randint(0, 13, (2, 3, 4))
    cond = vocab.cond_token(vocab.class_index(torch.tensor([-1, N - 1 if N else -1])))
    with torch.no_grad():
        logits = gpt_code_logits(model, codes, cond, 13)
        assert logits.shape == (2, 12, 13)
        # Position t predicts c_t: changing c_5 leaves the logits of c_0 .. c_5 alone and moves c_6's.
        changed = codes.clone()
        changed[:, 1, 1] = (changed[:, 1, 1] + 1) % 13
        other = gpt_code_logits(model, changed, cond, 13)
    assert torch.allclose(logits[:, :6], other[:, :6], atol=1e-6)
    assert not torch.allclose(logits[:, 6], other[:, 6])


def test_presets_grow():
    counts = []
    for name in ("tiny", "small", "base", "large"):
        with torch.device("meta"):
            counts.append(count_parameters(build_gpt(name, 1024, 10, 16, 16)))
    assert counts == sorted(counts) and len(set(counts)) == 4
    assert set(GPT_PRESETS) >= {"demo", "tiny", "small", "base", "large"}


@pytest.mark.parametrize(
    "extra,match",
    [({"vocab_size": 16}, "vocab_size"), ({"max_position_embeddings": 12}, "max_position_embeddings"),
     ({"hiden_size": 8}, "hiden_size"), ({"num_attention_heads": 5}, "LlamaConfig")],
)
def test_bad_overrides_are_one_line_errors(extra, match):
    with pytest.raises(VqgenError, match=match) as err:
        tiny(**extra)
    assert "\n" not in str(err.value)


def test_unknown_preset_and_family():
    with pytest.raises(VqgenError, match="preset"):
        build_gpt("huge", 13, 0, 2, 2)
    with pytest.raises(VqgenError, match="family"):
        build_gpt("tiny", 13, 0, 2, 2, family="mamba")


PLAIN_LOADER = Path(__file__).parent / "load_plain.py"  # never imports vqgen


def test_saved_prior_loads_with_plain_transformers(tmp_path):
    """One subprocess (that never imports vqgen) loads both families with AutoModelForCausalLM."""
    models = {family: tiny(family, K=13, N=3) for family in FAMILIES}
    for family, model in models.items():
        model.save_pretrained(tmp_path / family)
    ids = torch.cat([torch.tensor([[14], [16]]), torch.randint(0, 13, (2, 11))], dim=1)
    save_file({"ids": ids}, tmp_path / "ids.safetensors")
    subprocess.run([sys.executable, str(PLAIN_LOADER), str(tmp_path), *FAMILIES], check=True, timeout=120, cwd=tmp_path)
    for family, model in models.items():
        got = load_file(tmp_path / f"{family}.safetensors")
        with torch.no_grad():
            assert torch.allclose(model(input_ids=ids).logits, got["logits"], atol=1e-5)
        assert got["sampled"].shape == (2, 13)
        assert bool((got["sampled"][:, 1:] < 13).all()), "plain generate() must only emit codes"


# The preset architectures (hidden, layers, heads, intermediate), as they have been since the presets
# were made: renaming the keys or sharing the family mapping must build exactly these models.
PRESET_SIZES = {"demo": (128, 4, 4, 384), "tiny": (256, 4, 4, 704), "small": (512, 8, 8, 1408),
                "base": (768, 12, 12, 2048), "large": (1024, 24, 16, 2816)}


def expected_parameters(family: str, hidden: int, layers: int, intermediate: int, vocab: int, positions: int) -> int:
    """Untied embeddings and head. Llama: no biases, q/k/v/o of hidden^2, SwiGLU's three matrices and two
    RMSNorms per layer. GPT-2: learned positions, biased projections, two LayerNorms per layer."""
    if family == "llama":
        per_layer = 4 * hidden**2 + 3 * hidden * intermediate + 2 * hidden
        return 2 * vocab * hidden + layers * per_layer + hidden
    per_layer = 4 * hidden**2 + 2 * hidden * intermediate + 9 * hidden + intermediate
    return 2 * vocab * hidden + positions * hidden + layers * per_layer + 2 * hidden


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", sorted(PRESET_SIZES))
def test_each_preset_builds_its_architecture(family, preset):
    hidden, layers, heads, intermediate = PRESET_SIZES[preset]
    with torch.device("meta"):
        model = build_gpt(preset, 1024, 10, 16, 16, family=family)
    vocab, positions = 1024 + 10 + 1, 16 * 16 + 1
    assert count_parameters(model) == expected_parameters(family, hidden, layers, intermediate, vocab, positions)
    assert model.config.num_attention_heads == heads  # both families answer to the Llama name


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"])
@pytest.mark.parametrize("value", [0, -3])
def test_sizes_below_one_are_one_line_errors(family, key, value):
    name = key if family == "llama" else GPT2_NAMES[key]
    with pytest.raises(VqgenError, match=rf"prior.model.{name} must be >= 1, got {value}") as err:
        tiny(family, **{name: value})
    assert "\n" not in str(err.value)


def test_presets_use_the_transformers_field_names():
    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    assert all(set(sizes) <= fields for sizes in GPT_PRESETS.values())
