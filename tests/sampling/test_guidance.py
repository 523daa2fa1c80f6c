"""Guidance schedules and intervals: the scale of each draw, how the samplers use it, and the refusals."""

import dataclasses
import math

import pytest
import torch

from core.errors import VqgenError
from sampling.generate import GridSpec, SampleConfig, check_config, generate, generate_gpt
from sampling.guidance import guidance_scales
from sampling.logits import SampleNoise
from sampling.maskgit import decode, decode_step, generate_maskgit, mask_schedule
from stage2_prior.gpt import build_gpt
from stage2_prior.maskgit import build_maskgit, mask_token
from stage2_prior.vocab import PriorVocab

K, N, H, W = 16, 3, 4, 4
T = H * W
SPEC = GridSpec(PriorVocab(K, N), H, W)
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])
S = 3.0  # cfg_scale


def linear(n):
    return [1 + (S - 1) * (i + 1) / n for i in range(n)]


def cosine(n):
    return [1 + (S - 1) * (1 - math.cos(math.pi * (i + 1) / n)) / 2 for i in range(n)]


def inside(n, start, end, scales):
    return [s if start <= i / n < end else 1.0 for i, s in enumerate(scales)]


CASES = {  # (schedule, interval) -> the scales of n draws, written out from the README's formulas
    (None, None): lambda n: [S] * n,
    ("constant", None): lambda n: [S] * n,
    ("constant", (0.0, 1.0)): lambda n: [S] * n,
    ("linear", None): linear,
    ("cosine", None): cosine,
    ("constant", (0.0, 0.5)): lambda n: inside(n, 0.0, 0.5, [S] * n),
    ("linear", (0.25, 1.0)): lambda n: inside(n, 0.25, 1.0, linear(n)),
}
SETTINGS = [(schedule, None if interval is None else list(interval)) for schedule, interval in CASES]


def scales(schedule, interval, n):
    return CASES[schedule, None if interval is None else tuple(interval)](n)


@pytest.mark.parametrize("schedule,interval", SETTINGS)
@pytest.mark.parametrize("n", [1, 4, 16])
def test_scales_of_each_draw(schedule, interval, n):
    got = guidance_scales(S, schedule, interval, n)
    assert got == pytest.approx(scales(schedule, interval, n), abs=1e-12)


def test_constant_is_exactly_the_scale_and_the_interval_halves_the_draws():
    assert guidance_scales(1.7, None, None, 16) == [1.7] * 16  # exactly, not 1 + 0.7 * 1
    assert guidance_scales(2.0, "constant", [0.0, 0.5], 4) == [2.0, 2.0, 1.0, 1.0]
    assert guidance_scales(2.0, "linear", [0.5, 1.0], 4) == [1.0, 1.0, 1.75, 2.0]


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    return build_gpt("demo", K, N, H, W, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4).eval()


@torch.no_grad()
def guided_by_recompute(model, labels, scales, seed):
    """Independent reference: every code from the whole prefix, cond and uncond rows run apart,
    l_u + s_t (l_c - l_u) at the scale of code t, then the same per-sample noise as the sampler."""
    vocab = SPEC.vocab
    cond = vocab.cond_token(vocab.class_index(labels))[:, None]
    uncond = torch.full_like(cond, vocab.uncond_token)
    noise, codes = SampleNoise(seed, list(range(len(labels)))), torch.zeros(len(labels), 0, dtype=torch.long)
    for t in range(T):
        lc = model(input_ids=torch.cat([cond, codes], 1)).logits[:, -1, :K].float()
        lu = model(input_ids=torch.cat([uncond, codes], 1)).logits[:, -1, :K].float()
        logits = lc if scales[t] == 1.0 else lu + scales[t] * (lc - lu)
        codes = torch.cat([codes, (logits - noise.exponential(K).log()).argmax(-1, keepdim=True)], 1)
    return codes.reshape(-1, H, W)


@pytest.mark.parametrize("schedule,interval", SETTINGS)
def test_gpt_guides_each_code_at_its_scale(gpt, schedule, interval):
    """Constant with no interval is the sampler as it was (one scale for every code); the others
    guide code t at their scale t of T."""
    cfg = SampleConfig(seed=2, cfg_scale=S, cfg_schedule=schedule, cfg_interval=interval, batch_size=4)
    got = torch.cat([b.codes for b in generate(gpt, generate_gpt, SPEC, LABELS, list(range(len(LABELS))), cfg)])
    assert torch.equal(got, guided_by_recompute(gpt, LABELS, scales(schedule, interval, T), seed=2))


def test_a_schedule_changes_the_samples(gpt):
    base = SampleConfig(seed=2, cfg_scale=30.0)  # an untrained prior's classes differ little: guide hard
    plain = generate_gpt(gpt, SPEC, LABELS, list(range(6)), base)
    for change in ({"cfg_schedule": "linear"}, {"cfg_schedule": "cosine"}, {"cfg_interval": [0.0, 0.5]}):
        assert not torch.equal(generate_gpt(gpt, SPEC, LABELS, list(range(6)), dataclasses.replace(base, **change)),
                               plain), change


@pytest.fixture(scope="module")
def maskgit():
    torch.manual_seed(0)
    return build_maskgit("demo", K, N, H, W, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, initializer_range=0.3).eval()


@pytest.mark.parametrize("schedule,interval", SETTINGS)
def test_maskgit_guides_each_step_at_its_scale(maskgit, schedule, interval):
    """MaskGIT's draws are its steps: step s of S is guided at scale s of S, checked against
    decode_step called by hand with those scales."""
    steps, vocab = 4, SPEC.vocab
    cfg = SampleConfig(seed=3, cfg_scale=S, cfg_schedule=schedule, cfg_interval=interval, steps=steps)
    cond = vocab.cond_token(vocab.class_index(LABELS))
    rows = torch.cat([cond, torch.full_like(cond, vocab.uncond_token)])
    indices = list(range(len(LABELS)))
    noise = SampleNoise(cfg.seed, indices)
    tokens = torch.full((len(LABELS), T), mask_token(vocab))
    with torch.no_grad():
        for step, (left, scale) in enumerate(zip(mask_schedule(T, steps), scales(schedule, interval, steps)), 1):
            tokens = decode_step(maskgit, tokens, rows, left, 4.5 * (1 - step / steps), scale, cfg, noise, SPEC)
    assert torch.equal(decode(maskgit, SPEC, rows, indices, cfg)[-1], tokens)
    if (schedule, interval) != (None, None):  # and the schedule matters
        plain = generate_maskgit(maskgit, SPEC, LABELS, indices, SampleConfig(seed=3, cfg_scale=S, steps=steps))
        same = torch.equal(plain.flatten(1), tokens)
        assert same == (scales(schedule, interval, steps) == [S] * steps)


@pytest.mark.parametrize("cfg,match", [
    (SampleConfig(cfg_scale=2.0, cfg_schedule="square"), r"sample.cfg_schedule='square' is unknown; use one of "
                                                          "constant, linear, cosine"),
    (SampleConfig(cfg_scale=2.0, cfg_interval=[0.5, 0.5]), r"sample.cfg_interval=\[0.5, 0.5\]: need \[start, end\)"),
    (SampleConfig(cfg_scale=2.0, cfg_interval=[0.6, 0.2]), r"0 <= start < end <= 1"),
    (SampleConfig(cfg_scale=2.0, cfg_interval=[0.0, 1.5]), r"0 <= start < end <= 1"),
    (SampleConfig(cfg_scale=2.0, cfg_interval=[-0.1, 0.5]), r"0 <= start < end <= 1"),
    (SampleConfig(cfg_scale=2.0, cfg_interval=[0.5]), r"0 <= start < end <= 1"),
    (SampleConfig(cfg_schedule="linear"), r"sample.cfg_schedule shape classifier-free guidance, but cfg_scale is 1"),
    (SampleConfig(cfg_interval=[0.0, 0.5]), r"sample.cfg_interval shape classifier-free guidance, but cfg_scale is 1"),
])
def test_nonsense_guidance_settings_are_one_line(cfg, match):
    with pytest.raises(VqgenError, match=match) as err:
        check_config(cfg, N, "prior")
    assert "\n" not in str(err.value)


def test_a_constant_schedule_at_scale_one_is_allowed():
    check_config(SampleConfig(cfg_schedule="constant"), N, "prior")  # the default, written out
