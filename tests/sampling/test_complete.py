import sys
from pathlib import Path

import pytest
import torch

from sampling.complete import complete_images, keep_rows
from sampling.generate import SampleConfig
from stage1_vqvae.load import load_tokenizer
from stage2_prior.load import load_prior

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_generator import GRID, K, save_prior, save_tokenizer  # noqa: E402

ARCHS = ("gpt", "pixelcnn", "maskgit")


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    """Each arch's tiny prior (loaded) and the tokenizer (8x8 grey images, 4x4 grids of K=16 codes)."""
    root = tmp_path_factory.mktemp("gen")
    tokenizer = save_tokenizer(root / "tokenizer")
    priors = {arch: load_prior(save_prior(root / arch, tokenizer, arch=arch)) for arch in ARCHS}
    return priors, load_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(7)
    return torch.rand(2, 1, 8, 8) * 2 - 1


def codes_of(tokenizer, images):
    return tokenizer.encode(images)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_completion_keeps_the_kept_codes_and_repeats(generators, images, arch):
    priors, tokenizer = generators
    keep = keep_rows(GRID, GRID, 2)
    cfg = SampleConfig(n=3, temperature=0.0, cfg_scale=2.0, batch_size=2)
    first = complete_images(priors[arch], tokenizer, images, keep, cfg, labels=torch.tensor([0, 2]))
    again = complete_images(priors[arch], tokenizer, images, keep, cfg, labels=torch.tensor([0, 2]))
    assert first.codes.shape == (2, 3, GRID, GRID) and first.completions.shape == (2, 3, 1, 8, 8)
    original = codes_of(tokenizer, images)
    assert torch.equal(first.codes[:, :, :2], original[:, None, :2].expand(-1, 3, -1, -1))
    assert torch.equal(first.codes, again.codes) and torch.equal(first.completions, again.completions)
    assert 0 <= int(first.codes.min()) and int(first.codes.max()) < K
