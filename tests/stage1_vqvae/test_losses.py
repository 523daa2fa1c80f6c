import math

import pytest
import torch

from stage1_vqvae.losses import psnr_from_mse, tokenizer_loss
from stage1_vqvae.model import VQVAE, VQVAEConfig, VQVAEOutput


def fake_output(recon: torch.Tensor, commitment: float = 0.5, codebook: float | None = None) -> VQVAEOutput:
    losses = {"commitment": torch.tensor(commitment)}
    if codebook is not None:
        losses["codebook"] = torch.tensor(codebook)
    return VQVAEOutput(reconstruction=recon, codes=None, losses=losses)


def test_total_is_pixel_term_plus_every_quantizer_term():
    x = torch.zeros(2, 1, 4, 4)
    recon = torch.full_like(x, 0.5)
    result = tokenizer_loss(x, fake_output(recon, 0.5, 0.25))
    assert result.mse.item() == pytest.approx(0.25)
    assert result.loss.item() == pytest.approx(0.25 + 0.5 + 0.25)
    assert result.quantizer.keys() == {"commitment", "codebook"}


@pytest.mark.parametrize("kind, expected", [("mse", 0.25), ("l1", 0.5)])
def test_pixel_term_kinds(kind, expected):
    x = torch.zeros(1, 1, 2, 2)
    result = tokenizer_loss(x, fake_output(torch.full_like(x, -0.5), 0.0), kind)
    assert result.reconstruction.item() == pytest.approx(expected)
    assert result.mse.item() == pytest.approx(0.25)  # MSE is reported whatever the pixel term
    assert ("l1" in result.log()) == (kind == "l1")


def test_unknown_kind_is_refused():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="huber"):
        tokenizer_loss(x, fake_output(x), "huber")


def test_psnr_is_measured_on_the_0_1_scale():
    # An error of 0.2 in [-1, 1] units is 0.1 in [0, 1]: PSNR = 20 log10(1 / 0.1) = 20 dB.
    assert psnr_from_mse(0.2**2).item() == pytest.approx(20.0, rel=1e-5)
    assert psnr_from_mse(0.0).item() > 90 and math.isfinite(psnr_from_mse(0.0).item())


def test_log_is_detached_scalars_without_prefix():
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(base_channels=8, channel_mult=(1, 2), code_dim=8, codebook_size=16, image_size=16))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    result = tokenizer_loss(x, model(x))
    log = result.log()
    assert set(log) == {"loss", "mse", "psnr", "commitment"}
    assert all(v.ndim == 0 and not v.requires_grad for v in log.values())
    assert result.loss.requires_grad
    result.loss.backward()
    assert model.decoder.conv_out.weight.grad is not None
