"""Tiny quantizers of every kind, for the tests of the shared interface."""

import pytest
import torch

from stage1_vqvae.quantizers import build_quantizer, quantizer_settings

DIM = 8  # D of the test inputs (B, D, h, w)

# (model.quantizer settings, id): each kind with and without its projection or lookup space.
KINDS = [
    ({"kind": "vq", "codebook_size": 16, "kmeans_init": False, "restart_after_steps": 0}, "vq-ema"),
    ({"kind": "vq", "codebook_size": 16, "ema": False, "lookup_dim": 4}, "vq-learned-lookup4"),
    ({"kind": "fsq", "levels": [8, 5, 5, 5]}, "fsq-projected"),
    ({"kind": "fsq", "levels": [3, 4, 5, 6, 7, 8, 3, 4]}, "fsq-identity"),
    ({"kind": "lfq", "bits": 5}, "lfq-projected"),
    ({"kind": "lfq", "bits": DIM, "entropy_group_bits": 3}, "lfq-identity-grouped"),
]
EACH_KIND = pytest.mark.parametrize("settings", [pytest.param(s, id=i) for s, i in KINDS])


def make(settings: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build_quantizer(quantizer_settings(settings), DIM)


def inputs(b: int = 4, seed: int = 1, size: int = 4) -> torch.Tensor:
    """(B, D, h, w) encoder-like outputs."""
    return torch.randn(b, DIM, size, size, generator=torch.Generator().manual_seed(seed))
