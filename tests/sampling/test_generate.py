import dataclasses

import pytest
import torch

from core.errors import VqgenError
from sampling.generate import (
    GridSpec,
    SampleConfig,
    check_config,
    decode_n_tokens,
    generate,
    generate_gpt,
    generate_pixelcnn,
    plan_labels,
)
from sampling.logits import SampleNoise, top_k_filter, top_p_filter
from stage2_prior.gpt import build_gpt
from stage2_prior.pixelcnn import build_pixelcnn
from stage2_prior.vocab import PriorVocab

K, N, H, W = 16, 3, 4, 4
SPEC = GridSpec(PriorVocab(K, N), H, W)
TINY = {
    "llama": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    "gpt2": {"n_embd": 32, "n_inner": 64, "n_layer": 2, "n_head": 4},
}
LABELS = torch.tensor([0, 1, 2, -1, 0, 1, 2, -1])


def tiny_gpt(family):
    torch.manual_seed(0)
    return build_gpt("demo", K, N, H, W, family=family, **TINY[family]).eval()


@pytest.fixture(scope="module")
def gpt():
    return tiny_gpt("llama")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def any_gpt(request):
    """Both families, for the tests of the KV cache (each family has its own attention code)."""
    return tiny_gpt(request.param)


def sample_all(model, labels, cfg):
    batches = generate(model, generate_gpt, SPEC, labels, list(range(len(labels))), cfg)
    return torch.cat([b.codes for b in batches])


def greedy_by_recompute(model, labels):
    """Independent reference: feed the whole prefix at every step, take the argmax code."""
    vocab = SPEC.vocab
    seq = vocab.cond_token(vocab.class_index(labels))[:, None]
    for _ in range(H * W):
        logits = model(input_ids=seq).logits[:, -1, :K]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq[:, 1:].reshape(-1, H, W)


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
def test_cached_greedy_equals_recompute(any_gpt, kv_cache):
    cfg = SampleConfig(temperature=0.0, kv_cache=kv_cache)
    with torch.no_grad():
        expected = greedy_by_recompute(any_gpt, LABELS)
    assert torch.equal(sample_all(any_gpt, LABELS, cfg), expected)


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
@pytest.mark.parametrize("top_k,top_p,cfg_scale", [(5, 1.0, 1.0), (0, 0.8, 1.0), (6, 0.9, 3.0)])
def test_cached_sampling_equals_recompute(any_gpt, kv_cache, top_k, top_p, cfg_scale):
    cfg = SampleConfig(seed=7, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale, temperature=1.3)
    cached = sample_all(any_gpt, LABELS, dataclasses.replace(cfg, kv_cache=kv_cache))
    assert torch.equal(cached, sample_all(any_gpt, LABELS, dataclasses.replace(cfg, kv_cache="none")))


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_same_seed_same_samples_at_any_batch_size(gpt, cfg_scale):
    runs = [sample_all(gpt, LABELS, SampleConfig(seed=3, batch_size=b, cfg_scale=cfg_scale)) for b in (1, 3, 8)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    other = sample_all(gpt, LABELS, SampleConfig(seed=4, cfg_scale=cfg_scale))
    assert not torch.equal(runs[0], other)


def test_top_k_one_is_greedy(gpt):
    greedy = sample_all(gpt, LABELS, SampleConfig(temperature=0.0))
    assert torch.equal(sample_all(gpt, LABELS, SampleConfig(top_k=1, seed=1)), greedy)
    assert torch.equal(sample_all(gpt, LABELS, SampleConfig(top_p=1e-6, seed=2)), greedy)


def test_guidance_scale_one_equals_conditional_rows_only(gpt):
    """The guided path (2B rows: cond then uncond) at s=1 must give the unguided samples: the
    unconditional rows share the batch but never leak into the conditional ones."""
    cfg = SampleConfig(seed=5)
    vocab = SPEC.vocab
    cond = vocab.cond_token(vocab.class_index(LABELS))
    rows = torch.cat([cond, torch.full_like(cond, vocab.uncond_token)])
    noise = SampleNoise(cfg.seed, list(range(len(LABELS))))
    with torch.no_grad():
        guided = decode_n_tokens(gpt, rows, H * W, cfg, noise, guided=True, k=K).reshape(-1, H, W)
    assert torch.equal(guided, sample_all(gpt, LABELS, cfg))


def test_guidance_scale_zero_is_unconditional(gpt):
    """l_u + 0 * (l_c - l_u) = l_u: scale 0 samples what the unconditional token samples."""
    uncond = sample_all(gpt, torch.full_like(LABELS, -1), SampleConfig(seed=9))
    assert torch.equal(sample_all(gpt, LABELS, SampleConfig(seed=9, cfg_scale=0.0)), uncond)
    assert not torch.equal(sample_all(gpt, LABELS, SampleConfig(seed=9, cfg_scale=4.0)), uncond)


def test_class_condition_reaches_the_model(gpt):
    """Samples of sample index i with label c equal a direct call with that condition token."""
    cfg = SampleConfig(seed=11, batch_size=3)
    codes = sample_all(gpt, LABELS, cfg)
    for c in (0, 2, -1):
        rows = (LABELS == c).nonzero().flatten().tolist()
        direct = generate_gpt(gpt, SPEC, torch.full((len(rows),), c), rows, cfg)
        assert torch.equal(codes[rows], direct)


@pytest.mark.parametrize(
    "cfg,num_classes,expected",
    [
        (SampleConfig(n=5), 3, [0, 1, 2, 0, 1]),
        (SampleConfig(n=4, classes=[2, -1]), 3, [2, -1, 2, -1]),
        (SampleConfig(per_class=2, classes=[1, 0]), 3, [1, 1, 0, 0]),
        (SampleConfig(per_class=2), 2, [0, 0, 1, 1]),
        (SampleConfig(n=3), 0, [-1, -1, -1]),
    ],
)
def test_plan_labels(cfg, num_classes, expected):
    assert plan_labels(cfg, num_classes).tolist() == expected


@pytest.mark.parametrize(
    "cfg,num_classes,match",
    [
        (SampleConfig(classes=[3]), 3, "out of range"),
        (SampleConfig(classes=[-2]), 3, "out of range"),
        (SampleConfig(cfg_scale=2.0), 0, "unconditional"),
        (SampleConfig(classes=[0]), 0, "unconditional"),
        (SampleConfig(top_p=0.0), 3, "top_p"),
        (SampleConfig(kv_cache="paged"), 3, "kv_cache"),
        (SampleConfig(n=0), 3, "n >= 1"),
        (SampleConfig(n=-2), 3, "n >= 1"),
        (SampleConfig(per_class=-1), 3, "per_class"),
        (SampleConfig(temperature=float("nan")), 3, "finite temperature"),
        (SampleConfig(cfg_scale=float("inf")), 3, "cfg_scale"),
    ],
)
def test_check_config_rejects(cfg, num_classes, match):
    with pytest.raises(VqgenError, match=match):
        check_config(cfg, num_classes, source="prior")


def test_top_k_filter_keeps_k_largest():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    kept = top_k_filter(logits, 3).isfinite()
    assert kept.sum(-1).tolist() == [3] * 4
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, logits.topk(3).indices, True))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.999])
def test_top_p_filter_keeps_smallest_set_reaching_p(p):
    logits = torch.randn(6, 12, generator=torch.Generator().manual_seed(1))
    kept = top_p_filter(logits, p).isfinite()
    probs = logits.softmax(-1)
    for row in range(len(logits)):
        order = probs[row].argsort(descending=True)
        n = int((probs[row][order].cumsum(0) < p).sum()) + 1  # fewest top tokens with mass >= p
        assert kept[row].sum() == n and kept[row][order[:n]].all()


@pytest.fixture(scope="module")
def pixelcnn():
    torch.manual_seed(0)
    return build_pixelcnn("demo", K, N, H, W, hidden_size=16, num_layers=2, head_size=16).eval()


def pixelcnn_argmax(model, labels):
    """Reference: raster order, the argmax code at each position."""
    codes = torch.zeros(len(labels), H, W, dtype=torch.long)
    index = SPEC.vocab.class_index(labels)
    for i in range(H):
        for j in range(W):
            codes[:, i, j] = model(codes, index).logits[:, i, j].argmax(-1)
    return codes


def test_pixelcnn_top_k_one_is_argmax(pixelcnn):
    with torch.no_grad():
        expected = pixelcnn_argmax(pixelcnn, LABELS)
    for cfg in (SampleConfig(temperature=0.0), SampleConfig(top_k=1, seed=3)):
        assert torch.equal(generate_pixelcnn(pixelcnn, SPEC, LABELS, list(range(8)), cfg), expected)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_pixelcnn_same_seed_same_samples_at_any_batch_size(pixelcnn, cfg_scale):
    def run(batch_size, seed=1):
        cfg = SampleConfig(seed=seed, batch_size=batch_size, cfg_scale=cfg_scale, top_p=0.95)
        return torch.cat([b.codes for b in generate(pixelcnn, generate_pixelcnn, SPEC, LABELS, list(range(8)), cfg)])

    first = run(1)
    assert torch.equal(first, run(3)) and torch.equal(first, run(8))
    assert not torch.equal(first, run(8, seed=2))
    assert first.shape == (8, H, W) and 0 <= first.min() and first.max() < K


def test_pixelcnn_guidance_scale_zero_is_unconditional(pixelcnn):
    uncond = generate_pixelcnn(pixelcnn, SPEC, torch.full_like(LABELS, -1), list(range(8)), SampleConfig(seed=4))
    guided = generate_pixelcnn(pixelcnn, SPEC, LABELS, list(range(8)), SampleConfig(seed=4, cfg_scale=0.0))
    assert torch.equal(guided, uncond)
