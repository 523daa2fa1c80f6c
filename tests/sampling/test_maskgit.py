"""The MaskGIT sampler: schedule, per-sample streams, guidance and its one-line refusals."""

import dataclasses
import math

import pytest
import torch

from core.errors import VqgenError
from sampling.generate import GridSpec, SampleConfig, generate
from sampling.maskgit import DEFAULT_STEPS, check_maskgit, decode, generate_maskgit, mask_schedule
from stage2_prior.maskgit import build_maskgit, mask_token
from stage2_prior.vocab import PriorVocab

K, N, H, W = 16, 3, 4, 4
T = H * W
SPEC = GridSpec(PriorVocab(K, N), H, W)
LABELS = torch.tensor([0, 1, 2, -1, 0, 1, 2, -1])
MASK = mask_token(SPEC.vocab)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_maskgit("demo", K, N, H, W, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, initializer_range=0.3).eval()


def sample_all(model, labels, cfg):
    return torch.cat([b.codes for b in generate(model, generate_maskgit, SPEC, labels, list(range(len(labels))), cfg)])


def rows(labels, guided):
    vocab = SPEC.vocab
    cond = vocab.cond_token(vocab.class_index(labels))
    return torch.cat([cond, torch.full_like(cond, vocab.uncond_token)]) if guided else cond


def test_schedule_is_the_cosine_of_the_paper():
    # No clamp binds at T=16, S=8: n_s = floor(T cos(pi/2 s/S)), then 0.
    expected = [math.floor(T * math.cos(math.pi / 2 * s / 8)) for s in range(1, 8)] + [0]
    assert mask_schedule(T, 8) == expected
    assert mask_schedule(T, 1) == [0]  # one step decodes everything
    assert mask_schedule(T, T) == list(range(T - 1, -1, -1))  # T steps: one code each


@pytest.mark.parametrize("num_tokens,steps", [(16, 3), (64, 8), (64, 12), (256, 12), (5, 5), (256, 256)])
def test_schedule_decodes_at_least_one_code_a_step_and_ends_empty(num_tokens, steps):
    counts = [num_tokens, *mask_schedule(num_tokens, steps)]
    assert len(counts) == steps + 1 and counts[-1] == 0 and min(counts[:-1]) >= 1
    assert all(a > b for a, b in zip(counts, counts[1:]))


@pytest.mark.parametrize("steps", [1, 3, DEFAULT_STEPS, T])
def test_masked_codes_per_step_follow_the_schedule(model, steps):
    cfg = SampleConfig(seed=2, steps=steps, top_k=4)
    history = decode(model, SPEC, rows(LABELS, False), list(range(len(LABELS))), cfg)
    assert [int((tokens == MASK).sum(1).max()) for tokens in history] == mask_schedule(T, steps)
    assert [int((tokens == MASK).sum(1).min()) for tokens in history] == mask_schedule(T, steps)
    for before, after in zip(history, history[1:]):  # a decoded code is never changed again
        known = before != MASK
        assert torch.equal(after[known], before[known])
    assert 0 <= history[-1].min() and history[-1].max() < K


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_same_seed_same_samples_at_any_batch_size(model, cfg_scale):
    runs = [sample_all(model, LABELS, SampleConfig(seed=3, batch_size=b, cfg_scale=cfg_scale)) for b in (1, 3, 8)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert torch.equal(runs[0], sample_all(model, LABELS, SampleConfig(seed=3, cfg_scale=cfg_scale)))  # again
    assert not torch.equal(runs[0], sample_all(model, LABELS, SampleConfig(seed=4, cfg_scale=cfg_scale)))


def test_a_sample_depends_on_its_index_not_its_neighbours(model):
    """Sample 5 alone (index 5) equals sample 5 of the whole run: its stream is (seed, 5)."""
    cfg = SampleConfig(seed=6, top_p=0.9)
    whole = sample_all(model, LABELS, cfg)
    alone = generate_maskgit(model, SPEC, LABELS[5:6], [5], cfg)
    assert torch.equal(alone[0], whole[5])


def test_greedy_one_step_is_the_argmax_of_the_all_masked_grid(model):
    cfg = SampleConfig(temperature=0.0, steps=1)
    vocab = SPEC.vocab
    ids = torch.cat([rows(LABELS, False)[:, None], torch.full((len(LABELS), T), MASK)], dim=1)
    with torch.no_grad():
        expected = model(input_ids=ids).logits[:, 1:, :K].argmax(-1).reshape(-1, H, W)
    assert torch.equal(generate_maskgit(model, SPEC, LABELS, list(range(8)), cfg), expected)
    assert vocab.vocab_size == MASK  # [MASK] is one past the prior vocabulary


def test_top_k_one_is_greedy(model):
    greedy = sample_all(model, LABELS, SampleConfig(temperature=0.0, seed=1))
    assert torch.equal(sample_all(model, LABELS, SampleConfig(top_k=1, seed=1)), greedy)


def test_guidance_scale_one_equals_conditional_rows_only(model):
    """The guided path (2B rows: cond then uncond) at s=1 gives the unguided samples."""
    cfg = SampleConfig(seed=5)
    guided = decode(model, SPEC, rows(LABELS, True), list(range(len(LABELS))), cfg)[-1]
    assert torch.equal(guided.reshape(-1, H, W), sample_all(model, LABELS, cfg))


def test_guidance_scale_zero_is_unconditional(model):
    uncond = sample_all(model, torch.full_like(LABELS, -1), SampleConfig(seed=9))
    assert torch.equal(sample_all(model, LABELS, SampleConfig(seed=9, cfg_scale=0.0)), uncond)
    assert not torch.equal(sample_all(model, LABELS, SampleConfig(seed=9, cfg_scale=4.0)), uncond)


def test_choice_temperature_changes_which_codes_are_kept(model):
    base = SampleConfig(seed=8, temperature=0.0)
    none = sample_all(model, LABELS, dataclasses.replace(base, choice_temperature=0.0))
    assert torch.equal(none, sample_all(model, LABELS, dataclasses.replace(base, choice_temperature=0.0)))
    assert not torch.equal(none, sample_all(model, LABELS, dataclasses.replace(base, choice_temperature=50.0)))


@pytest.mark.parametrize(
    "cfg,match",
    [(SampleConfig(steps=T + 1), r"sample.steps=17: .* T=16 codes .* between 1 and 16"),
     (SampleConfig(steps=0), "between 1 and 16"),
     (SampleConfig(kv_cache="dynamic"), "kv_cache is for autoregressive"),
     (SampleConfig(kv_cache="static"), "kv_cache is for autoregressive")],
)
def test_settings_a_maskgit_prior_cannot_honour_are_one_line(cfg, match):
    with pytest.raises(VqgenError, match=match) as err:
        check_maskgit(cfg, SPEC, source="prior")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("steps", [1, T])
def test_edge_step_counts_are_accepted(steps):
    check_maskgit(SampleConfig(steps=steps), SPEC, source="prior")
