"""The interface every kind keeps (stage1_vqvae/quantizers/base.py), checked on each kind."""

import math
import sys
from pathlib import Path

import pytest
import torch

from stage1_vqvae.quantizers import quantizer_settings

sys.path.insert(0, str(Path(__file__).parent))
from quantizer_kinds import DIM, EACH_KIND, KINDS, inputs, make  # noqa: E402


@EACH_KIND
def test_lookup_equals_the_eval_output(settings):
    q = make(settings)
    q(inputs(seed=5))  # a training step first: VQ's k-means init, LFQ's and FSQ's meters
    q.eval()
    with torch.no_grad():
        out = q(inputs())
    assert out.z_q.shape == (4, DIM, 4, 4) and out.indices.shape == (4, 4, 4)
    assert out.indices.dtype == torch.int64
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < q.codebook_size
    torch.testing.assert_close(q.lookup(out.indices), out.z_q, rtol=0, atol=0)


@pytest.mark.parametrize("settings, k", [({"kind": "vq", "codebook_size": 300}, 300),
                                         ({"kind": "fsq", "levels": [8, 5, 5, 5]}, 1000),
                                         ({"kind": "fsq", "levels": [8, 8, 8, 5, 5, 5]}, 64000),
                                         ({"kind": "lfq", "bits": 10}, 1024), ({"kind": "lfq", "bits": 16}, 2**16)])
def test_codebook_size_comes_from_the_settings(settings, k):
    assert quantizer_settings(settings).codebook_size == k
    assert make(settings).codebook_size == k


@EACH_KIND
def test_every_code_decodes_to_its_own_vector(settings):
    q = make(settings)
    q(inputs(b=8))  # VQ: k-means init, so that no two codes start equal
    q.eval()
    if not isinstance(q.project_out, torch.nn.Identity):
        q.project_out = torch.nn.Identity()  # a projection D <- d may merge codes; the codes themselves may not
    vectors = q.lookup(torch.arange(q.codebook_size).reshape(1, 1, -1))[0, :, 0].t()  # (K, d)
    assert torch.unique(vectors, dim=0).shape[0] == q.codebook_size


@EACH_KIND
def test_straight_through_gradient_reaches_the_encoder(settings):
    q = make(settings).train()
    z = inputs().requires_grad_(True)
    out = q(z)
    (out.z_q * torch.randn(out.z_q.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@EACH_KIND
def test_losses_are_named_scalars_that_reach_the_encoder(settings):
    q = make(settings).train()
    z = inputs().requires_grad_(True)
    out = q(z)
    expected = {"vq": {"commitment"} | ({"codebook"} if settings.get("ema") is False else set()),
                "fsq": set(), "lfq": {"commitment", "entropy"}}[settings["kind"]]
    assert set(out.losses) == expected
    for name, term in out.losses.items():
        assert term.shape == () and torch.isfinite(term), name
    if out.losses:
        (grad,) = torch.autograd.grad(sum(out.losses.values()), z)
        assert grad.abs().sum() > 0


@EACH_KIND
def test_perplexity_and_usage_meters(settings):
    q = make(settings)
    q(inputs(b=8, seed=9))
    q.eval()
    q.reset_usage()  # eval usage counts since the last reset (training forwards count too)
    z = inputs()
    with torch.no_grad():
        out = q(z)
    counts = torch.bincount(out.indices.flatten(), minlength=q.codebook_size).double()
    p = counts[counts > 0] / counts.sum()
    assert out.perplexity.item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)
    used = int((counts > 0).sum())
    assert out.usage.item() == pytest.approx(used / q.codebook_size)
    q.reset_usage()
    assert q.usage_since_reset() == 0.0
    with torch.no_grad():
        q(z[:1])
        q(z[1:])
    assert q.usage_since_reset() == pytest.approx(used / q.codebook_size)


@pytest.mark.parametrize("settings", [pytest.param(s, id=i) for s, i in KINDS if s["kind"] != "vq"])
def test_training_usage_counts_the_last_usage_window_steps(settings):
    # FSQ and LFQ: a vector's code never changes, so the window's codes are known (VQ: test_vq.py).
    q = make({**settings, "usage_window": 2}).train()
    used, usage = [], []
    for seed in range(4):
        out = q(inputs(b=1, seed=seed, size=2))
        used.append(set(out.indices.flatten().tolist()))
        usage.append(out.usage.item())
    for step in range(1, 4):
        assert usage[step] == pytest.approx(len(used[step] | used[step - 1]) / q.codebook_size)
    assert int(q.step) == 4 and set(torch.nonzero(q.last_used == 3).flatten().tolist()) == used[3]


@EACH_KIND
def test_state_dict_round_trip_gives_identical_outputs(settings):
    a = make(settings).train()
    for seed in range(3):
        a(inputs(seed=seed))
    b = make(settings, seed=123)
    b.load_state_dict(a.state_dict())
    for mode in (True, False):
        for q in (a, b):
            q.train(mode).reset_usage()  # eval usage counts since a reset: a meter, not saved state
        out_a, out_b = a(inputs(seed=7)), b(inputs(seed=7))
        assert torch.equal(out_a.z_q, out_b.z_q) and torch.equal(out_a.indices, out_b.indices)
        assert out_a.usage == out_b.usage
