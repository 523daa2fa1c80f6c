"""FSQ against the paper's definition and against vector-quantize-pytorch's `FSQ`."""

import pytest
import torch
from vector_quantize_pytorch import FSQ

from stage1_vqvae.quantizers import FiniteScalarQuantizer, FSQConfig

LEVELS = [pytest.param(levels, id="-".join(map(str, levels)))
          for levels in ((8, 5, 5, 5), (8, 8, 8, 5, 5, 5), (3, 4, 6, 7))]


def pair(levels: tuple[int, ...], dim: int) -> tuple[FiniteScalarQuantizer, FSQ]:
    """Ours and theirs with the same projections (none when dim == len(levels))."""
    torch.manual_seed(0)
    ours = FiniteScalarQuantizer(FSQConfig(levels=levels), dim=dim)
    theirs = FSQ(list(levels), dim=dim)
    if dim != len(levels):
        theirs.project_in.load_state_dict(ours.project_in.state_dict())
        theirs.project_out.load_state_dict(ours.project_out.state_dict())
    return ours, theirs


def sweep(d: int) -> torch.Tensor:
    """(1, d, 20001, 1): every dimension swept through [-5, 5], across every rounding boundary."""
    return torch.linspace(-5, 5, 20001).view(1, 1, -1, 1).expand(1, d, -1, 1).contiguous()


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("projected", [False, True])
def test_same_codes_and_outputs_as_vector_quantize_pytorch(levels, projected):
    dim = 16 if projected else len(levels)
    ours, theirs = pair(levels, dim)
    gen = torch.Generator().manual_seed(1)
    for z in (torch.randn(8, dim, 8, 8, generator=gen), 4 * torch.randn(8, dim, 8, 8, generator=gen), sweep(dim)):
        for mode in (True, False):
            ours.train(mode)
            theirs.train(mode)
            out = ours(z)
            z_q, indices = theirs(z)
            assert torch.equal(out.indices, indices.long())
            torch.testing.assert_close(out.z_q, z_q)
    codes = torch.arange(ours.codebook_size).view(1, 1, -1)
    torch.testing.assert_close(ours.eval().lookup(codes), theirs.indices_to_codes(codes))


@pytest.mark.parametrize("levels", LEVELS)
def test_each_dimension_takes_exactly_its_levels(levels):
    q = FiniteScalarQuantizer(FSQConfig(levels=levels), dim=len(levels)).eval()
    z_q = q(sweep(len(levels))).z_q  # (1, d, T, 1), no projection: the grid values themselves
    for i, level in enumerate(levels):
        half = level // 2
        # odd L: -(L-1)/2 .. (L-1)/2; even L: the half-level offset gives -L/2 .. L/2 - 1 (paper §3)
        expected = torch.arange(-half, level - half) / half
        assert torch.equal(torch.unique(z_q[0, i]), expected.float())


def test_straight_through_the_rounding_only():
    """The gradient is that of the bound tanh(z + shift) * half_l - offset, over half_width (§3)."""
    q = FiniteScalarQuantizer(FSQConfig(levels=(8, 5)), dim=2).train()
    z = torch.randn(2, 2, 4, 4).requires_grad_(True)
    q(z).z_q.sum().backward()
    shift, half_l, half_width = (t.view(1, 2, 1, 1) for t in (q.shift, q.half_l, q.half_width))
    expected = (1 - torch.tanh(z.detach() + shift).square()) * half_l / half_width
    torch.testing.assert_close(z.grad, expected)


def test_no_losses_and_every_code_has_an_input():
    q = FiniteScalarQuantizer(FSQConfig(levels=(5, 3)), dim=2).eval()
    grid = torch.stack(torch.meshgrid(torch.linspace(-3, 3, 61), torch.linspace(-3, 3, 61), indexing="ij"))
    out = q(grid.unsqueeze(0))  # (1, 2, 61, 61)
    assert out.losses == {}
    assert sorted(out.indices.unique().tolist()) == list(range(15))
