"""The MaskGIT model: a stock BERT over [cond, codes or MASK], bidirectional, sized like the GPT presets."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.errors import VqgenError
from stage2_prior.gpt import GPT_PRESETS, build_gpt, count_parameters
from stage2_prior.maskgit import MASKGIT_PRESETS, build_maskgit, mask_token, maskgit_logits
from stage2_prior.vocab import PriorVocab

SMALL = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4}
PLAIN_LOADER = Path(__file__).parent / "load_plain_masked.py"  # never imports vqgen


def tiny(K=13, N=3, h=3, w=4, **extra):
    torch.manual_seed(0)
    return build_maskgit("tiny", K, N, h, w, **{**SMALL, **extra}).eval()


@pytest.mark.parametrize("N", [0, 3])
def test_vocab_and_sequence_layout(N):
    model, vocab = tiny(N=N), PriorVocab(13, N)
    assert mask_token(vocab) == 13 + N + 1 and model.config.vocab_size == 13 + N + 2
    assert model.config.max_position_embeddings == 3 * 4 + 1 and not model.config.is_decoder
    assert model.config._attn_implementation == "sdpa"
    # No dropout (as the Llama prior): runs match across process counts.
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0
    # BERT's default pad_token_id 0 would make code 0's embedding a frozen padding row.
    assert model.bert.embeddings.word_embeddings.padding_idx is None
    codes = torch.randint(0, 13, (2, 3, 4))
    codes[:, 0, 0] = 0
    cond = vocab.cond_token(vocab.class_index(torch.tensor([-1, N - 1 if N else -1])))
    logits = maskgit_logits(model.train(), codes, cond, 13)
    assert logits.shape == (2, 12, 13)
    logits[:, :, 0].sum().backward()
    assert model.bert.embeddings.word_embeddings.weight.grad[0].abs().sum() > 0


def test_every_position_sees_the_whole_grid():
    """Bidirectional, unlike the GPT: changing the code at (1, 1) moves the logits before it too."""
    model, vocab = tiny(), PriorVocab(13, 3)
    codes = torch.randint(0, 13, (2, 3, 4))
    changed = codes.clone()
    changed[:, 1, 1] = (changed[:, 1, 1] + 1) % 13
    cond = vocab.cond_token(torch.tensor([0, 3]))
    with torch.no_grad():
        a, b = maskgit_logits(model, codes, cond, 13), maskgit_logits(model, changed, cond, 13)
        other_class = maskgit_logits(model, codes, vocab.cond_token(torch.tensor([1, 2])), 13)
    assert not torch.allclose(a[:, 0], b[:, 0]) and not torch.allclose(a[:, -1], b[:, -1])
    assert not torch.allclose(a, other_class), "the condition token reaches every position"


@pytest.mark.parametrize("K,N,grid", [(1024, 10, 16), (512, 10, 8)])
def test_presets_match_the_gpt_presets_in_size(K, N, grid):
    """The same preset name is about the same parameter count as the Llama GPT (the bench compares them)."""
    for preset in GPT_PRESETS:
        with torch.device("meta"):
            gpt = count_parameters(build_gpt(preset, K, N, grid, grid))
            maskgit = count_parameters(build_maskgit(preset, K, N, grid, grid))
        assert abs(maskgit / gpt - 1) < 0.08, (preset, gpt, maskgit)
    assert set(MASKGIT_PRESETS) == set(GPT_PRESETS)


@pytest.mark.parametrize(
    "extra,match",
    [({"vocab_size": 16}, "vocab_size: 16 is too small for K=13 codes \\+ 3 classes \\+ 1 \\+ \\[MASK\\]"),
     ({"max_position_embeddings": 12}, "max_position_embeddings: 12 is too short for T=12"),
     ({"hiden_size": 8}, "hiden_size"), ({"num_attention_heads": 5}, "not a multiple of num_attention_heads 5"),
     ({"num_hidden_layers": 0}, "prior.model.num_hidden_layers must be >= 1"),
     ({"is_decoder": True}, "attends both ways")],
)
def test_bad_overrides_are_one_line_errors(extra, match):
    with pytest.raises(VqgenError, match=match) as err:
        tiny(**extra)
    assert "\n" not in str(err.value)


def test_unknown_preset():
    with pytest.raises(VqgenError, match="unknown MaskGIT preset 'huge'; choose one of demo, tiny"):
        build_maskgit("huge", 13, 0, 2, 2)


def test_saved_prior_loads_with_plain_transformers(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "model")
    ids = torch.cat([torch.tensor([[14], [16]]), torch.randint(0, 18, (2, 12))], dim=1)  # class 1, uncond; [MASK] = 17
    save_file({"ids": ids}, tmp_path / "ids.safetensors")
    subprocess.run([sys.executable, str(PLAIN_LOADER), str(tmp_path)], check=True, timeout=120, cwd=tmp_path)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, load_file(tmp_path / "model.safetensors")["logits"], atol=1e-5)
