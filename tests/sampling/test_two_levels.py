"""Sampling a two-level GPT prior: top codes first, then bottom, in one pass over [cond, top, bottom],
each position drawing only from its level's range; the KV cache, guidance and per-sample streams as
for one level. A two-level PixelCNN: the top grid, then the bottom conditioned on it, with guidance and
per-sample streams as for one level. Both end to end from a two-level tokenizer's codes to PNGs, with
the refusals."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import DataConfig
from core.errors import VqgenError
from core.loop import TrainConfig
from sampling.completion_folder import complete
from sampling.decode import sample
from sampling.generate import GridSpec, SampleConfig, generate, generate_gpt, generate_pixelcnn
from stage1_vqvae.codes import dump_codes
from stage2_prior.gpt import build_gpt_tokens
from stage2_prior.pixelcnn import build_pixelcnn
from stage2_prior.train import PriorRunConfig, train_prior
from stage2_prior.vocab import PriorVocab
from tests.tiny_generator import TWO_LEVELS as LEVELS
from tests.tiny_generator import N, save_tokenizer

SPEC = GridSpec.of_levels(PriorVocab.of_levels([8, 16], N), LEVELS)
LABELS = torch.tensor([0, 1, 2, -1, 0, 1])
GPT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
GPT2 = {"n_embd": 32, "n_inner": 64, "n_layer": 2, "n_head": 4}
PIXELCNN = {"hidden_size": 8, "num_layers": 2, "head_size": 16, "kernel_size": 3}


def tiny_gpt(family: str) -> torch.nn.Module:
    """A random two-level GPT whose head favours the bottom codes 8.. everywhere (x 8): a sampler that
    let a top position draw outside the top range [0, 8) would do so at once."""
    torch.manual_seed(0)
    model = build_gpt_tokens("demo", SPEC.vocab, 20, family, GPT if family == "llama" else GPT2).eval()
    with torch.no_grad():
        model.lm_head.weight[8:24] *= 8.0
    return model


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def gpt(request):
    return tiny_gpt(request.param)


def sample_all(model, cfg, labels=LABELS, draw=generate_gpt):
    batches = list(generate(model, draw, SPEC, labels, list(range(len(labels))), cfg))
    return {name: torch.cat([b.codes[name] for b in batches]) for name in ("top", "bottom")}


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_level_is_drawn_from_its_own_range(gpt):
    codes = sample_all(gpt, SampleConfig(seed=1, temperature=1.5))
    assert codes["top"].shape == (6, 2, 2) and codes["bottom"].shape == (6, 4, 4)
    assert 0 <= int(codes["top"].min()) and int(codes["top"].max()) < 8
    assert 0 <= int(codes["bottom"].min()) and int(codes["bottom"].max()) < 16


def greedy_by_recompute(model, labels):
    """Independent reference: the whole prefix fed at every step, the argmax over the position's level."""
    vocab = SPEC.vocab
    seq = vocab.cond_token(vocab.class_index(labels))[:, None]
    for lo, hi in [(0, 8)] * 4 + [(8, 24)] * 16:
        logits = model(input_ids=seq).logits[:, -1, lo:hi]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True) + lo], dim=1)
    return {"top": seq[:, 1:5].reshape(-1, 2, 2), "bottom": seq[:, 5:].reshape(-1, 4, 4) - 8}


@pytest.mark.parametrize("kv_cache", ["dynamic", "static", "none"])
def test_greedy_equals_recompute(gpt, kv_cache):
    with torch.no_grad():
        expected = greedy_by_recompute(gpt, LABELS)
    assert equal(sample_all(gpt, SampleConfig(temperature=0.0, kv_cache=kv_cache)), expected)


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
@pytest.mark.parametrize("top_k,top_p,cfg_scale,schedule", [(5, 1.0, 1.0, None), (0, 0.8, 3.0, "linear")])
def test_cached_sampling_equals_recompute(gpt, kv_cache, top_k, top_p, cfg_scale, schedule):
    cfg = SampleConfig(seed=7, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale, cfg_schedule=schedule, temperature=1.3)
    cached = sample_all(gpt, dataclasses.replace(cfg, kv_cache=kv_cache))
    assert equal(cached, sample_all(gpt, dataclasses.replace(cfg, kv_cache="none")))


def test_a_sample_depends_on_its_seed_and_index_only(gpt):
    cfg = SampleConfig(seed=3, cfg_scale=2.0)
    runs = [sample_all(gpt, dataclasses.replace(cfg, batch_size=b)) for b in (1, 4, 6)]
    assert equal(runs[0], runs[1]) and equal(runs[0], runs[2])
    assert not equal(runs[0], sample_all(gpt, dataclasses.replace(cfg, seed=4)))


# ---- the two-level PixelCNN ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pixelcnn():
    torch.manual_seed(0)
    return build_pixelcnn("tiny", 16, N, 4, 4, LEVELS[0], **PIXELCNN).eval()


def sample_pixelcnn(model, cfg, labels=LABELS):
    return sample_all(model, cfg, labels, draw=generate_pixelcnn)


def test_pixelcnn_draws_the_top_then_the_bottom_in_their_ranges(pixelcnn):
    codes = sample_pixelcnn(pixelcnn, SampleConfig(seed=1, temperature=1.5))
    assert codes["top"].shape == (6, 2, 2) and codes["bottom"].shape == (6, 4, 4)
    assert 0 <= int(codes["top"].min()) and int(codes["top"].max()) < 8
    assert 0 <= int(codes["bottom"].min()) and int(codes["bottom"].max()) < 16


def pixelcnn_greedy_by_recompute(model, labels, scale):
    """Independent reference: the model's full forward over both grids (its conditioning stack rerun on
    the current top at every step), guided l_u + s (l_c - l_u), argmax; the top's codes, then the bottom's."""
    index = SPEC.vocab.class_index(labels)
    rows = torch.cat([index, torch.full_like(index, N)])
    codes = {"top": torch.zeros(12, 2, 2, dtype=torch.long), "bottom": torch.zeros(12, 4, 4, dtype=torch.long)}
    for name in ("top", "bottom"):
        for i, j in np.ndindex(*codes[name].shape[1:]):
            cond, uncond = model(codes, rows).level_logits()[name][:, i, j].chunk(2)
            codes[name][:, i, j] = (uncond + scale * (cond - uncond)).argmax(-1).repeat(2)
    return {name: grid[:6] for name, grid in codes.items()}


def test_pixelcnn_guided_greedy_equals_recompute(pixelcnn):
    with torch.no_grad():
        expected = pixelcnn_greedy_by_recompute(pixelcnn, LABELS, 4.0)
    assert equal(sample_pixelcnn(pixelcnn, SampleConfig(temperature=0.0, cfg_scale=4.0, batch_size=4)), expected)
    assert not equal(sample_pixelcnn(pixelcnn, SampleConfig(temperature=0.0)), expected), "guidance changed nothing"


def test_pixelcnn_sample_depends_on_its_seed_and_index_only(pixelcnn):
    cfg = SampleConfig(seed=3, cfg_scale=2.0, top_k=6)
    runs = [sample_pixelcnn(pixelcnn, dataclasses.replace(cfg, batch_size=b)) for b in (1, 4, 6)]
    assert equal(runs[0], runs[1]) and equal(runs[0], runs[2])
    assert not equal(runs[0], sample_pixelcnn(pixelcnn, dataclasses.replace(cfg, seed=4)))


def test_pixelcnn_runs_its_conditioning_stack_once_per_batch(pixelcnn):
    calls = []
    handle = pixelcnn.condition.register_forward_hook(lambda module, inputs, out: calls.append(inputs[0].shape))
    try:
        sample_pixelcnn(pixelcnn, SampleConfig(seed=1, cfg_scale=2.0, batch_size=4))
    finally:
        handle.remove()
    assert calls == [(8, 2, 2), (4, 2, 2)]  # two batches (4 + 2 samples), guided: [cond; uncond] rows


# ---- end to end: a two-level tokenizer's codes, a prior trained on them, samples decoded -------------

@pytest.fixture(scope="module")
def two_level_codes(tmp_path_factory, fmnist_available):
    root = tmp_path_factory.mktemp("two-levels")
    tokenizer = save_tokenizer(root / "tokenizer", levels=2, warm=True)
    codes = dump_codes(tokenizer, DataConfig(image_size=8, max_images=48), root / "codes", batch_size=16)
    return root, codes, tokenizer


def train_on(two_level_codes, arch: str, model: dict):
    root, codes, tokenizer = two_level_codes
    cfg = PriorRunConfig(codes=str(codes), arch=arch, preset="tiny", model=model, train=TrainConfig(
        steps=4, batch_size=16, lr=1e-3, warmup_steps=1, eval_every=4, save_every=4, log_every=1))
    return train_prior(cfg, root / f"prior-{arch}"), tokenizer


@pytest.fixture(scope="module")
def generator(two_level_codes):
    return train_on(two_level_codes, "gpt", GPT)


@pytest.fixture(scope="module")
def pixelcnn_generator(two_level_codes):
    return train_on(two_level_codes, "pixelcnn", PIXELCNN)


@pytest.mark.parametrize("trained", ["generator", "pixelcnn_generator"])
def test_dump_train_sample_end_to_end(tmp_path, request, trained):
    prior, tokenizer = request.getfixturevalue(trained)
    run = prior.parent
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "val/nll" in line][-1]
    assert {"val/top/bits_per_token", "val/bottom/bits_per_token", "val/bits_per_token"} <= set(last)
    cfg = SampleConfig(n=5, batch_size=2, seed=2, cfg_scale=1.5)
    out = sample(prior, tokenizer, cfg, tmp_path / "s")
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 5 and (out / "grid.png").is_file()
    assert all(Image.open(p).size == (8, 8) for p in pngs)
    with np.load(out / "codes.npz") as saved:
        assert sorted(saved.files) == ["bottom", "indices", "labels", "top"]
        top, bottom = saved["top"], saved["bottom"]
    assert top.shape == (5, 2, 2) and bottom.shape == (5, 4, 4)
    assert top.min() >= 0 and top.max() < 8 and bottom.min() >= 0 and bottom.max() < 16
    # Resume: the missing samples are made again, the same.
    before = {p.name: p.read_bytes() for p in pngs}
    pngs[3].unlink()
    sample(prior, tokenizer, dataclasses.replace(cfg, batch_size=3), out)
    assert {p.name: p.read_bytes() for p in (out / "images").glob("*.png")} == before
    with np.load(out / "codes.npz") as again:
        assert np.array_equal(again["top"], top) and np.array_equal(again["bottom"], bottom)


def test_a_tokenizer_with_other_levels_is_refused_naming_the_prior_file(tmp_path, generator):
    prior, _ = generator
    one = save_tokenizer(tmp_path / "one")  # one level: 4x4 codes, K=16
    other = save_tokenizer(tmp_path / "other", levels=2, top_k=4, warm=True)
    source = prior / "vqgen_prior.json"
    drawn = "the prior draws 2 levels (top 2x2 (K=8), bottom 4x4 (K=16))"
    for tokenizer, has in ((one, "1 level (codes 4x4 (K=16))"), (other, "2 levels (top 2x2 (K=4), bottom 4x4 (K=16))")):
        with pytest.raises(VqgenError) as err:
            sample(prior, tokenizer, SampleConfig(n=1), tmp_path / "s")
        assert str(err.value) == (f"{source}: {drawn} but the tokenizer {tokenizer} has {has}; pass the tokenizer "
                                  "the prior was trained with")
    assert not (tmp_path / "s").exists()


def test_completing_with_a_two_level_prior_is_refused_in_one_line(tmp_path, generator):
    prior, tokenizer = generator
    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    with pytest.raises(VqgenError) as err:
        complete(prior, tokenizer, [image], 1, SampleConfig(n=1), tmp_path / "c")
    assert str(err.value).startswith(f"{prior / 'vqgen_prior.json'}: a two-level prior (top 2x2 (K=8), bottom 4x4")
    assert "completing, serving and exporting two levels come later" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "c").exists()
