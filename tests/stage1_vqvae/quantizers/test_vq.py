import pytest
import torch
from einops import rearrange

from core.errors import VqgenError
from stage1_vqvae.quantizers import VectorQuantizer, VQConfig
from stage1_vqvae.quantizers.kmeans import kmeans, nearest_code

MODES = [
    pytest.param(ema, lookup_dim, id=f"{'ema' if ema else 'learned'}-lookup{lookup_dim}")
    for ema in (True, False)
    for lookup_dim in (0, 8)
]


def make(ema: bool, lookup_dim: int, **overrides) -> VectorQuantizer:
    torch.manual_seed(0)
    cfg = dict(codebook_size=32, ema=ema, lookup_dim=lookup_dim, kmeans_init=False,
               restart_after_steps=0)
    return VectorQuantizer(VQConfig(**{**cfg, **overrides}), dim=16)


def data(b: int = 4, seed: int = 1, offset: float = 0.0) -> torch.Tensor:
    """(B, D=16, h=4, w=4) encoder-like outputs."""
    return torch.randn(b, 16, 4, 4, generator=torch.Generator().manual_seed(seed)) + offset


def flat(z: torch.Tensor) -> torch.Tensor:
    return rearrange(z, "b d h w -> (b h w) d")


def distance_to_nearest(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each row of a, the distance to the nearest row of b (float64: exact near zero)."""
    return torch.cdist(a.detach().double(), b.detach().double()).min(1).values


@pytest.mark.parametrize("ema, lookup_dim", MODES)
def test_lookup_equals_eval_output_and_indices_are_nearest(ema, lookup_dim):
    q = make(ema, lookup_dim).eval()
    z = data()
    with torch.no_grad():
        out = q(z)
        z_l = q.to_lookup_space(flat(z))
    assert out.z_q.shape == z.shape and out.indices.shape == (4, 4, 4)
    assert out.indices.dtype == torch.int64
    torch.testing.assert_close(q.lookup(out.indices), out.z_q, rtol=0, atol=0)
    dist = torch.cdist(z_l.double(), q.codebook.double())
    chosen = dist.gather(1, out.indices.flatten().unsqueeze(1)).squeeze(1)
    assert torch.all(chosen <= dist.min(1).values + 1e-6)


@pytest.mark.parametrize("ema, lookup_dim", MODES)
def test_straight_through_reaches_z(ema, lookup_dim):
    q = make(ema, lookup_dim).train()
    z = data().requires_grad_(True)
    weight = torch.randn(z.shape)
    (q(z).z_q * weight).sum().backward()
    # The estimator is the identity in lookup space: d z_q / d z = d project_out(to_lookup(z)) / d z.
    z2 = data().requires_grad_(True)
    through = rearrange(q.project_out(q.to_lookup_space(flat(z2))), "(b h w) d -> b d h w", b=4, h=4)
    (expected,) = torch.autograd.grad(through, z2, weight)
    assert z.grad.abs().sum() > 0
    torch.testing.assert_close(z.grad, expected)


@pytest.mark.parametrize("ema, lookup_dim", MODES)
def test_beta_multiplies_the_encoder_term(ema, lookup_dim):
    beta = 0.7
    q = make(ema, lookup_dim, beta=beta).train()
    codebook = q.codebook.detach().clone()  # before the EMA step inside forward
    z = data().requires_grad_(True)
    out = q(z)
    (grad_z,) = torch.autograd.grad(out.losses["commitment"], z, retain_graph=True)
    z_l = q.to_lookup_space(flat(z))
    e = codebook[out.indices.flatten()]
    (expected,) = torch.autograd.grad(z_l, z, 2 * beta * (z_l - e).detach() / z_l.numel())
    torch.testing.assert_close(grad_z, expected)
    if not ema:  # the codebook term moves the codebook only, and the commitment term never does
        grad_z, grad_e = torch.autograd.grad(out.losses["codebook"], [z, q.embed], allow_unused=True)
        assert grad_z is None
        # ||sg(z) - e||^2 / n with no beta: each code gets 2 (e - z) / n from every vector it serves
        # (through the l2 normalisation when lookup_dim > 0). taming's legacy=True would scale this by beta.
        per_vector = 2 * (e - z_l).detach() / z_l.numel()
        per_code = torch.zeros_like(codebook).index_add_(0, out.indices.flatten(), per_vector)
        (expected_e,) = torch.autograd.grad(q.codebook, q.embed, per_code)
        assert grad_e.abs().sum() > 0
        torch.testing.assert_close(grad_e, expected_e)
        (grad_e,) = torch.autograd.grad(out.losses["commitment"], [q.embed], allow_unused=True)
        assert grad_e is None


def test_ema_moves_used_codes_toward_their_vectors():
    q = make(True, 0, decay=0.9).train()
    before = q.embed.clone()
    z = data()
    indices = q(z).indices.flatten()
    for k in indices.unique():
        mean = flat(z)[indices == k].mean(0)
        assert (q.embed[k] - mean).norm() < (before[k] - mean).norm()


def test_laplace_smoothing_keeps_unused_codes_finite():
    q = make(True, 0, decay=0.1).train()  # 0.1**50 underflows: unused cluster sizes reach 0
    z = data(offset=4.0)  # far from the init, so only a few codes are ever hit
    for _ in range(50):
        q(z)
    assert (q.cluster_size == 0).any()
    assert torch.isfinite(q.embed).all()


@pytest.mark.parametrize("ema, lookup_dim", MODES)
def test_kmeans_init_puts_codes_on_the_data(ema, lookup_dim):
    q = make(ema, lookup_dim, codebook_size=8, kmeans_init=True).train()
    centres = 5.0 * torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    z = centres[torch.arange(64) % 8] + 0.01 * torch.randn(64, 16)
    q(rearrange(z, "(b h w) d -> b d h w", h=4, w=4))
    assert bool(q.initialised)
    targets = q.to_lookup_space(centres).detach()
    dist = torch.cdist(targets, q.codebook.detach())
    assert dist.min(1).values.max() < 0.05  # every cluster centre has a code on it


def test_kmeans_recovers_separated_clusters():
    centres = 10.0 * torch.eye(4)
    x = centres.repeat(50, 1) + 0.1 * torch.randn(200, 4)
    result = kmeans(x, 4, iters=10, cosine=False, generator=torch.Generator().manual_seed(0))
    assert sorted(result.counts.tolist()) == [50, 50, 50, 50]
    assert torch.cdist(centres, result.centroids).min(1).values.max() < 0.1
    assert torch.equal(nearest_code(result.centroids, result.centroids), torch.arange(4))


@pytest.mark.parametrize("ema, lookup_dim", MODES)
def test_dead_codes_are_restarted_on_the_data(ema, lookup_dim):
    q = make(ema, lookup_dim, restart_after_steps=3).train()
    z = data(offset=6.0)  # a blob far from the initial codebook: most codes are never hit
    blob = q.to_lookup_space(flat(z)).detach()
    for _ in range(3):
        q(z)
    dead = q.idle_steps >= 3
    before = distance_to_nearest(q.codebook, blob)
    assert int(q.restarts) == 0 and dead.any()
    q(z)  # codes idle for 3 steps are replaced by vectors of this batch before the lookup
    after = distance_to_nearest(q.codebook, blob)
    assert int(q.restarts) == int(dead.sum())
    assert torch.all(after[dead] < before[dead])
    if not ema:  # learned codes are exactly the sampled vectors (EMA ones have moved since)
        assert after[dead].max() < 1e-5
    assert q(z).usage > 0.5


@pytest.mark.parametrize("ema, lookup_dim", MODES)
def test_state_dict_round_trip_gives_identical_outputs(ema, lookup_dim):
    a = make(ema, lookup_dim, kmeans_init=True, restart_after_steps=2).train()
    for seed in range(3):
        a(data(seed=seed, offset=3.0))
    torch.manual_seed(123)  # a different initialisation, overwritten by the state dict
    b = VectorQuantizer(a.config, dim=16)
    b.load_state_dict(a.state_dict())
    b.train()
    for seed in range(3, 6):  # training continues identically, restarts included
        out_a, out_b = a(data(seed=seed, offset=3.0)), b(data(seed=seed, offset=3.0))
        torch.testing.assert_close(out_a.z_q, out_b.z_q, rtol=0, atol=0)
        assert torch.equal(out_a.indices, out_b.indices)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_usage_and_perplexity_meters():
    q = make(True, 0, codebook_size=16).eval()
    codes = q.codebook[torch.arange(16)]  # each code hit exactly once
    out = q(rearrange(codes, "(b h w) d -> b d h w", b=1, h=4))
    assert out.perplexity.item() == pytest.approx(16, rel=1e-4)
    assert out.usage.item() == 1.0 and q.usage_since_reset() == 1.0
    q.reset_usage()
    out = q(rearrange(codes[:1].expand(16, -1), "(b h w) d -> b d h w", b=1, h=4))
    assert out.perplexity.item() == pytest.approx(1.0)
    assert q.usage_since_reset() == pytest.approx(1 / 16)


def test_training_usage_counts_the_recent_window():
    q = make(True, 0, codebook_size=16, usage_window=2).train()
    codes = q.codebook.clone()
    for k in (0, 1, 2):
        q(rearrange(codes[k].expand(16, -1), "(b h w) d -> b d h w", b=1, h=4))
    # steps 2 and 3 (the last 2) used only code 2; codes 0 and 1 have left the window
    assert q(rearrange(codes[2].expand(16, -1), "(b h w) d -> b d h w", b=1, h=4)).usage == 1 / 16
    assert q.last_used[:3].tolist() == [0, 1, 3]


@pytest.mark.parametrize("field, value", [("decay", 1.0), ("codebook_size", 1), ("lookup_dim", -1)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(VqgenError, match=field):
        VQConfig(**{field: value})
