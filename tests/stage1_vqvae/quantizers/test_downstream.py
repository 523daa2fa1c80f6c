"""Every kind of quantizer through the rest of vqgen, unchanged: dump-codes, the priors, sampling and
the tokenizer's evaluation. K = 2**16 (LFQ, 16 bits) goes through the uint32 code path, 2**10 and the
others through uint16. Tiny data, tiny models, a few steps: this checks plumbing, not quality."""

import datasets
import numpy as np
import pytest
import torch

from core.code_grids import code_dtype, load_codes, read_meta
from core.data import DataConfig, load_images
from core.loop import TrainConfig
from eval.recon import tokenizer_metrics
from sampling.decode import sample
from sampling.generate import SampleConfig
from stage1_vqvae.codes import dump_codes
from stage1_vqvae.load import load_tokenizer
from stage2_prior.train import PriorRunConfig, train_prior
from tests.tiny_generator import save_tokenizer

DATA = DataConfig(image_size=8, max_images=24)  # Fashion-MNIST at 8 px: 4x4 code grids
PRIORS = {
    "gpt": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    "pixelcnn": {"hidden_size": 16, "num_layers": 2, "kernel_size": 3, "head_size": 16},
    "maskgit": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
}
TRAIN = TrainConfig(steps=2, batch_size=8, lr=1e-3, warmup_steps=0, eval_every=2, save_every=2, log_every=1)
KINDS = {
    "vq": ({"kind": "vq", "codebook_size": 16}, "uint16"),
    "fsq": ({"kind": "fsq", "levels": [5, 4, 3]}, "uint16"),
    "lfq-2^10": ({"kind": "lfq", "bits": 10}, "uint16"),
    "lfq-2^16": ({"kind": "lfq", "bits": 16}, "uint32"),
}


def all_images(split: str) -> torch.Tensor:
    images = load_images(DATA, split)
    return torch.stack([images[i]["image"] for i in range(len(images))])


# Every kind through the GPT prior; every prior through the smallest and the largest K.
PAIRS = [(kind, "gpt") for kind in KINDS] + [(kind, arch) for kind in ("vq", "lfq-2^16") for arch in ("pixelcnn", "maskgit")]


@pytest.fixture(scope="module", params=list(KINDS))
def coded(request, tmp_path_factory, fmnist_available):
    """(kind, tokenizer folder, code-grid folder)."""
    root = tmp_path_factory.mktemp(request.param)
    tok = save_tokenizer(root / "tokenizer", quantizer=KINDS[request.param][0], warm=True)  # warm: VQ's k-means init
    return request.param, tok, dump_codes(tok, DATA, root / "codes", batch_size=8)


def test_code_grids_hold_the_tokenizer_codes_in_the_right_dtype(coded):
    kind, tok, codes = coded
    model = load_tokenizer(tok)
    k = model.config.codebook_size
    meta = read_meta(codes)
    assert (meta.codebook_size, meta.grid_h, meta.grid_w) == (k, 4, 4)
    assert code_dtype(k) == KINDS[kind][1]
    assert datasets.load_from_disk(str(codes / "train")).features["codes"].dtype == KINDS[kind][1]
    expected = model.encode(all_images("train"))
    grids = load_codes(codes, "train")
    assert torch.equal(torch.stack([grids[i]["codes"] for i in range(len(grids))]), expected)
    if k == 2**16:
        assert int(expected.max()) > 2**15  # high code ids come back whole


def test_the_tokenizer_evaluation_counts_codes_out_of_k(coded):
    _, tok, _ = coded
    model = load_tokenizer(tok)
    scores = tokenizer_metrics(model, DATA, "val", batch_size=8)
    codes = model.encode(all_images("val"))
    used = len(codes.unique())
    assert scores["n_images"] == 24 and scores["usage"] == pytest.approx(100 * used / model.config.codebook_size)
    assert 1 <= scores["perplexity"] <= used + 1e-6


@pytest.mark.parametrize("coded, arch", PAIRS, indirect=["coded"], ids=[f"{k}-{a}" for k, a in PAIRS])
def test_each_prior_trains_on_the_codes_and_samples_decode(coded, arch, tmp_path):
    _, tok, codes = coded
    cfg = PriorRunConfig(codes=str(codes), arch=arch, preset="tiny", model=PRIORS[arch], train=TRAIN)
    prior = train_prior(cfg, tmp_path / "prior")
    out = sample(prior, tok, SampleConfig(n=3, batch_size=3, **({"steps": 2} if arch == "maskgit" else {})),
                 tmp_path / "samples")
    k = load_tokenizer(tok).config.codebook_size
    drawn = np.load(out / "codes.npz")["codes"]
    assert drawn.shape == (3, 4, 4) and drawn.min() >= 0 and drawn.max() < k
    assert len(list((out / "images").glob("*.png"))) == 3
