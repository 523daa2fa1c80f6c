"""LFQ against MAGVIT-v2's definition and against vector-quantize-pytorch's `LFQ`."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from vector_quantize_pytorch import LFQ

from stage1_vqvae.quantizers import LFQConfig, LookupFreeQuantizer


def make(bits: int, dim: int | None = None, **settings) -> LookupFreeQuantizer:
    torch.manual_seed(0)
    return LookupFreeQuantizer(LFQConfig(bits=bits, **settings), dim=dim or bits)


def joint_probabilities(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """By brute force: rows x (N, d) -> p(c | x) (N, 2^d) = softmax over every sign vector c of
    -||x - c||^2 / T, with code i the binary number of c's signs (MSB first)."""
    d = x.shape[1]
    bits = (torch.arange(2**d).unsqueeze(1) >> torch.arange(d - 1, -1, -1)) & 1
    codes = bits.float() * 2 - 1
    return torch.softmax(-torch.cdist(x.double(), codes.double()).square() / temperature, dim=1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(-1)


@pytest.mark.parametrize("projected", [False, True])
def test_same_codes_outputs_and_losses_as_vector_quantize_pytorch(projected):
    bits, dim = 6, 16 if projected else 6
    ours = make(bits, dim, entropy_temperature=1.0, beta=0.3, entropy_weight=0.2)
    theirs = LFQ(dim=dim, codebook_size=2**bits, commitment_loss_weight=0.3, entropy_loss_weight=0.2)
    if projected:
        theirs.project_in.load_state_dict(ours.project_in.state_dict())
        theirs.project_out.load_state_dict(ours.project_out.state_dict())
    # Small inputs at T = 1: no probability falls under the 1e-5 floor their entropy clamps at.
    z = 0.3 * torch.randn(4, dim, 4, 4, generator=torch.Generator().manual_seed(1))
    for mode in (True, False):
        ours.train(mode)
        theirs.train(mode)
        z_ours, z_theirs = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
        out = ours(z_ours)
        (quantized, indices, aux), _ = theirs(z_theirs, inv_temperature=1.0, return_loss_breakdown=True)
        assert torch.equal(out.indices, indices.long())
        torch.testing.assert_close(out.z_q, quantized)
        if mode:  # their commitment term is computed in training mode only
            torch.testing.assert_close(sum(out.losses.values()), aux)
            (out.z_q.square().mean() + sum(out.losses.values())).backward()
            (quantized.square().mean() + aux).backward()
            torch.testing.assert_close(z_ours.grad, z_theirs.grad)
    assert set(ours.eval()(z).losses) == {"commitment"}  # the entropy penalty is for training


@pytest.mark.parametrize("group_bits", [6, 3, 2])
def test_entropy_penalty_is_per_sample_minus_codebook_entropy(group_bits):
    temperature, bits = 0.5, 6
    q = make(bits, entropy_temperature=temperature, entropy_group_bits=group_bits, entropy_weight=0.7).train()
    x = torch.randn(64, bits, generator=torch.Generator().manual_seed(3))
    joint = joint_probabilities(x, temperature)  # (N, 64)
    per_sample = entropy(joint).mean()
    mean = joint.mean(0)
    # Groups of bits, MSB first: the codebook entropy is the sum of each group's marginal entropy,
    # the exact H(E[p]) when one group holds every bit.
    sizes = q.group_sizes
    assert sum(sizes) == bits and max(sizes) <= group_bits and max(sizes) - min(sizes) <= 1
    table = mean.view(*(2**s for s in sizes))
    marginals = [table.sum(dim=[j for j in range(len(sizes)) if j != i]) if len(sizes) > 1 else table
                 for i in range(len(sizes))]
    codebook = sum(entropy(m) for m in marginals)
    if group_bits >= bits:
        torch.testing.assert_close(codebook, entropy(mean))
    out = q(rearrange(x, "(b h w) d -> b d h w", b=4, h=4))
    expected = 0.7 * (per_sample - codebook)
    torch.testing.assert_close(out.losses["entropy"].double(), expected, rtol=1e-5, atol=1e-6)


def test_beta_multiplies_the_commitment_term():
    q = make(4, beta=0.6).train()
    z = torch.randn(2, 4, 3, 3).requires_grad_(True)
    out = q(z)
    (grad,) = torch.autograd.grad(out.losses["commitment"], z)
    signs = torch.where(z > 0, 1.0, -1.0)
    torch.testing.assert_close(grad, 2 * 0.6 * (z - signs).detach() / z.numel())
    torch.testing.assert_close(out.losses["commitment"], 0.6 * F.mse_loss(z, signs))


def test_codes_are_the_binary_numbers_of_the_signs():
    q = make(3).eval()
    z = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -2.0, -0.5], [0.1, 0.2, 0.3], [0.0, -0.0, -1.0]])
    out = q(rearrange(z, "(b h w) d -> b d h w", b=1, h=2))
    assert out.indices.flatten().tolist() == [0b001, 0b100, 0b111, 0b000]  # 0 counts as negative


def test_sixteen_bits_train_within_memory_by_groups():
    q = make(16, dim=8).train()  # default groups of <= 12 bits: two groups of 8, not 2^16 columns
    assert q.codebook_size == 2**16 and q.group_sizes == [8, 8]
    z = torch.randn(4, 8, 8, 8).requires_grad_(True)
    out = q(z)
    (out.z_q.square().mean() + sum(out.losses.values())).backward()
    assert torch.isfinite(z.grad).all() and int(out.indices.max()) < 2**16
