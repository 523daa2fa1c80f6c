import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from stage1_vqvae.discriminator import PatchDiscriminator
from stage1_vqvae.losses import (
    AdversarialConfig,
    Adversary,
    LossConfig,
    VQGANLoss,
    adaptive_weight,
    discriminator_gan_loss,
    generator_gan_loss,
    psnr_from_mse,
    tokenizer_loss,
)
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


# --- VQGAN: adversarial, feature-matching and LeCam terms (stage1_vqvae.losses.VQGANLoss) ---


class TinyDecoder(torch.nn.Module):
    """Stands for the tokenizer's decoder: its `last` convolution is the layer eq. 7 reads."""

    def __init__(self):
        super().__init__()
        self.body, self.last = torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, z):
        return torch.tanh(self.last(F.silu(self.body(z))))


def vqgan(weight=0.5, start=2, fm=0.0, lecam=0.0, loss="hinge", perceptual=None, perceptual_weight=0.0):
    torch.manual_seed(0)
    adv = AdversarialConfig(weight=weight, start=start, feature_matching_weight=fm, lecam_weight=lecam, loss=loss)
    cfg = LossConfig(perceptual_weight=perceptual_weight, adversarial=adv)
    adversary = Adversary(PatchDiscriminator(1, channels=8, layers=2), lecam_decay=0.9) if adv.enabled else None
    return VQGANLoss(cfg, perceptual, adversary)


def batch():
    torch.manual_seed(1)
    decoder = TinyDecoder()
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    output = fake_output(decoder(torch.randn(4, 2, 16, 16)), commitment=0.1)
    return decoder, images, output


def test_before_the_start_the_loss_is_vq_vaes_and_after_it_adds_the_weighted_gan_term():
    loss, (decoder, images, output) = vqgan(weight=0.5, start=2), batch()
    before = loss.generator(images, output, step=1, last_layer=decoder.last.weight)
    plain = tokenizer_loss(images, output)
    assert torch.equal(before.loss, plain.loss) and before.g_loss is None and not loss.adversarial_at(1)
    after = loss.generator(images, output, step=2, last_layer=decoder.last.weight)
    assert loss.adversarial_at(2) and {"g_loss", "adaptive_weight"} <= set(after.log())
    torch.testing.assert_close(after.loss, plain.loss + after.adaptive_weight * after.g_loss)


def test_adaptive_weight_is_vqgan_eq_7_clamped_and_times_the_disc_weight():
    loss, (decoder, images, output) = vqgan(weight=0.5), batch()
    result = loss.generator(images, output, step=5, last_layer=decoder.last.weight)
    # By hand: the two gradients on the last layer, their norms' ratio (delta 1e-4), times disc_weight 0.5.
    rec_grad, = torch.autograd.grad(F.mse_loss(output.reconstruction, images), decoder.last.weight, retain_graph=True)
    gan_grad, = torch.autograd.grad(result.g_loss, decoder.last.weight, retain_graph=True)
    expected = rec_grad.norm() / (gan_grad.norm() + 1e-4) * 0.5
    torch.testing.assert_close(result.adaptive_weight, expected)
    assert not result.adaptive_weight.requires_grad
    clamped = adaptive_weight(F.mse_loss(output.reconstruction, images), result.g_loss, decoder.last.weight, 1e-3)
    assert clamped.item() == pytest.approx(1e-3)


@pytest.mark.parametrize("kind", ["hinge", "non_saturating"])
def test_gan_losses_by_hand(kind):
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    if kind == "hinge":
        d = 0.5 * ((0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 2.5) / 3)
        g = -(-2.0 + 0.0 + 1.5) / 3
    else:
        softplus = lambda t: math.log1p(math.exp(t))  # noqa: E731
        d = 0.5 * (sum(softplus(-r) for r in real.tolist()) / 3 + sum(softplus(f) for f in fake.tolist()) / 3)
        g = sum(softplus(-f) for f in fake.tolist()) / 3
    assert discriminator_gan_loss(real, fake, kind).item() == pytest.approx(d, rel=1e-6)
    assert generator_gan_loss(fake, kind).item() == pytest.approx(g, rel=1e-6)


@pytest.mark.parametrize("fm", [0.0, 1.0])
def test_the_generator_loss_trains_the_decoder_never_the_discriminator(fm):
    loss, (decoder, images, output) = vqgan(weight=0.5, fm=fm), batch()
    loss.generator(images, output, step=5, last_layer=decoder.last.weight).loss.backward()
    assert decoder.last.weight.grad is not None and decoder.body.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.adversary.parameters())


def test_the_discriminator_loss_trains_the_discriminator_never_the_decoder():
    loss, (decoder, images, output) = vqgan(), batch()
    result = loss.discriminator(images, output.reconstruction, loss.adversary)
    result.d_loss.backward()
    assert all(p.grad is not None for p in loss.adversary.parameters())
    assert decoder.last.weight.grad is None
    logits_real, logits_fake = loss.adversary(images).mean(), loss.adversary(output.reconstruction).mean()
    torch.testing.assert_close(result.logits_real, logits_real.detach())
    torch.testing.assert_close(result.logits_fake, logits_fake.detach())
    assert set(result.log()) == {"d_loss", "logits_real", "logits_fake"}


def test_feature_matching_is_the_mean_l1_of_discriminator_features():
    loss, (decoder, images, output) = vqgan(weight=0.0, fm=2.0), batch()
    result = loss.generator(images, output, step=5, last_layer=decoder.last.weight)
    _, real = loss.adversary(images, features=True)
    _, fake = loss.adversary(output.reconstruction, features=True)
    expected = sum(F.l1_loss(f, r) for r, f in zip(real, fake)) / len(real)
    torch.testing.assert_close(result.feature_matching, expected)
    torch.testing.assert_close(result.loss, tokenizer_loss(images, output).loss + 2.0 * expected)
    assert result.g_loss is None  # weight 0: feature matching alone
    same = loss.generator(images, fake_output(images, 0.0), step=5, last_layer=decoder.last.weight)
    assert same.feature_matching.item() == 0.0


def test_lecam_anchors_are_running_means_and_the_penalty_is_one_sided():
    loss, (_, images, output) = vqgan(lecam=0.3), batch()
    adversary = loss.adversary
    adversary.ema_real.fill_(0.2), adversary.ema_fake.fill_(-0.4)
    result = loss.discriminator(images, output.reconstruction, adversary)
    real, fake = adversary(images).detach(), adversary(output.reconstruction).detach()
    ema_real, ema_fake = 0.9 * 0.2 + 0.1 * real.mean(), 0.9 * -0.4 + 0.1 * fake.mean()
    torch.testing.assert_close(adversary.ema_real, ema_real)
    torch.testing.assert_close(adversary.ema_fake, ema_fake)
    penalty = F.relu(real - ema_fake).pow(2).mean() + F.relu(ema_real - fake).pow(2).mean()
    torch.testing.assert_close(result.lecam, penalty)
    torch.testing.assert_close(result.d_loss, discriminator_gan_loss(real, fake, "hinge") + 0.3 * penalty)
    assert set(dict(adversary.named_buffers())) == {"ema_real", "ema_fake"}  # checkpointed with the weights


def test_perceptual_term_joins_the_loss_and_the_adaptive_weights_numerator():
    class Distance(torch.nn.Module):  # any differentiable image distance stands for LPIPS here
        def forward(self, x, y):
            return (x - y).abs().flatten(1).mean(1) * 3.0

    loss, (decoder, images, output) = vqgan(weight=1.0, perceptual=Distance(), perceptual_weight=0.5), batch()
    result = loss.generator(images, output, step=5, last_layer=decoder.last.weight)
    distance = (images - output.reconstruction).abs().mean() * 3.0
    torch.testing.assert_close(result.perceptual, distance)
    rec = F.mse_loss(output.reconstruction, images) + 0.5 * distance
    rec_grad, = torch.autograd.grad(rec, decoder.last.weight, retain_graph=True)
    gan_grad, = torch.autograd.grad(result.g_loss, decoder.last.weight, retain_graph=True)
    torch.testing.assert_close(result.adaptive_weight, rec_grad.norm() / (gan_grad.norm() + 1e-4))
    expected = tokenizer_loss(images, output).loss + 0.5 * distance + result.adaptive_weight * result.g_loss
    torch.testing.assert_close(result.loss, expected)


def test_an_adversarial_config_with_no_weights_builds_no_discriminator():
    assert not AdversarialConfig().enabled
    assert dataclasses.replace(AdversarialConfig(), feature_matching_weight=1.0).enabled
    assert not vqgan(weight=0.0).adversarial_at(10**6)
