"""The tokenizer's training loss: VQ-VAE's (eq. 3), and VQGAN's perceptual and adversarial terms on top.

    generator:     recon(x, x_hat) + quantizer terms
                   + perceptual_weight * LPIPS(x, x_hat)                     (Esser et al. 2021, §3.1)
                   + lambda * L_GAN(D(x_hat))                                (VQGAN eq. 7 for lambda)
                   + feature_matching_weight * L1(D_i(x), D_i(x_hat))        (pix2pixHD, Wang et al. 2018)
    discriminator: L_D(D(x), D(x_hat)) + lecam_weight * R_LC                 (Tseng et al. 2021)

The quantizer already weighs its own terms (commitment by beta). Pixel MSE is the default, as in the
VQ-VAE paper; L1 (taming-transformers' pixel term) is sharper on edges but lowers PSNR. The adversarial
and feature-matching terms, and the discriminator's training, start at `adversarial.start` (taming's
`disc_start`). Layout as taming-transformers' `VQLPIPSWithDiscriminator`
(taming/modules/losses/vqperceptual.py), with named results instead of a log dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from accelerate.utils import reduce
from torch import nn

from core.config import setting
from stage1_vqvae.model import VQVAEOutput

RECONSTRUCTION = ("mse", "l1")
GAN_LOSSES = ("hinge", "non_saturating")
ADAPTIVE_EPS = 1e-4  # VQGAN eq. 7's delta


@dataclass
class AdversarialConfig:
    """`tokenizer.loss.adversarial`: the PatchGAN discriminator, its loss and its optimizer."""

    weight: float = setting(0.0, "disc_weight, times the adaptive weight of VQGAN eq. 7; 0 (and no feature "
                            "matching): no discriminator", ge=0)
    start: int = setting(0, "disc_start: the step at which the discriminator and the adversarial terms start",
                         ge=0)
    loss: str = setting("hinge", "GAN loss: hinge (VQGAN) or non_saturating", choices=GAN_LOSSES)
    max_adaptive_weight: float = setting(1e4, "the adaptive weight is clamped to [0, this] (taming's 1e4)", gt=0)
    lecam_weight: float = setting(0.0, "LeCam regularisation of the discriminator (Tseng et al. 2021); 0: off",
                                  ge=0)
    lecam_decay: float = setting(0.99, "EMA decay of the logits LeCam anchors to", ge=0, lt=1)
    feature_matching_weight: float = setting(0.0, "L1 between the discriminator's features of images and of "
                                             "their reconstructions (pix2pixHD); 0: off", ge=0)
    discriminator_layers: int = setting(3, "stride-2 layers of the PatchGAN (3: pix2pix's 70x70 at 256 px)",
                                        ge=1, le=8)
    discriminator_channels: int = setting(64, "width of its first layer, doubling per layer up to 8x", ge=2)
    lr: float = setting(1e-4, "the discriminator's AdamW learning rate", gt=0, le=10)
    betas: tuple[float, float] = setting((0.5, 0.9), "the discriminator's AdamW betas (taming's)", length=2,
                                         ge=0, lt=1)
    weight_decay: float = setting(0.0, "the discriminator's weight decay, on matrices only", ge=0)
    warmup_steps: int = setting(0, "linear warmup of its lr, in global steps", ge=0, le=10**9)
    min_lr_ratio: float = setting(1.0, "its lr decays by cosine to lr * this at the last step; 1: constant",
                                  ge=0, le=1)

    @property
    def enabled(self) -> bool:
        return self.weight > 0 or self.feature_matching_weight > 0


@dataclass
class LossConfig:
    """`tokenizer.loss`: the terms of the tokenizer's loss (README, Stage 1)."""

    reconstruction: str = setting("mse", "pixel term: mse (VQ-VAE) or l1 (taming)", choices=RECONSTRUCTION)
    perceptual_weight: float = setting(0.0, "weight of LPIPS on VGG16; > 0 needs ImageNet VGG16 weights (README)",
                                       ge=0)
    perceptual_network: str = setting("vgg", "LPIPS backbone: vgg (the FID Inception network is refused)")
    perceptual_weights: str = setting("", "torchvision's vgg16-397923af.pth; empty: $VQGEN_LPIPS_WEIGHTS, then "
                                      "the torch hub cache")
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)


@dataclass
class TokenizerLoss:
    loss: torch.Tensor  # the scalar to backpropagate into the tokenizer
    kind: str  # the pixel term: "mse" or "l1"
    reconstruction: torch.Tensor  # the pixel term alone
    mse: torch.Tensor  # pixel MSE in [-1, 1] units, reported whatever the pixel term is
    psnr: torch.Tensor  # dB, for images rescaled to [0, 1]
    quantizer: dict[str, torch.Tensor]  # "commitment" [, "codebook"]
    perceptual: torch.Tensor | None = None  # LPIPS, before its weight
    g_loss: torch.Tensor | None = None  # the adversarial term, before its weight
    adaptive_weight: torch.Tensor | None = None  # the weight of g_loss: clamped lambda (eq. 7) x disc weight
    feature_matching: torch.Tensor | None = None  # before its weight

    def log(self) -> dict[str, torch.Tensor]:
        """Scalars for the metrics log, without the `train/` prefix the loop adds."""
        terms = {"loss": self.loss, "mse": self.mse, "psnr": self.psnr}
        if self.kind != "mse":
            terms[self.kind] = self.reconstruction
        optional = {"perceptual": self.perceptual, "g_loss": self.g_loss, "adaptive_weight": self.adaptive_weight,
                    "feature_matching": self.feature_matching}
        terms |= {name: value for name, value in optional.items() if value is not None}
        return {name: value.detach() for name, value in (terms | self.quantizer).items()}


@dataclass
class DiscriminatorLoss:
    d_loss: torch.Tensor  # the scalar to backpropagate into the discriminator
    logits_real: torch.Tensor  # mean logit of the images
    logits_fake: torch.Tensor  # mean logit of their reconstructions
    lecam: torch.Tensor | None = None  # R_LC, before its weight

    def log(self) -> dict[str, torch.Tensor]:
        terms = {"d_loss": self.d_loss, "logits_real": self.logits_real, "logits_fake": self.logits_fake}
        if self.lecam is not None:
            terms["lecam"] = self.lecam
        return {name: value.detach() for name, value in terms.items()}


def psnr_from_mse(mse: torch.Tensor | float) -> torch.Tensor:
    """PSNR in dB of images in [-1, 1], measured as if they were in [0, 1] (peak 1): the range halves,
    so the [0, 1] MSE is mse / 4."""
    mse01 = torch.as_tensor(mse, dtype=torch.float32) / 4.0
    return 10.0 * torch.log10(1.0 / mse01.clamp(min=1e-10))


def tokenizer_loss(images: torch.Tensor, output: VQVAEOutput, kind: Literal["mse", "l1"] = "mse") -> TokenizerLoss:
    """VQ-VAE's loss: images and output.reconstruction (B, C, H, W) in [-1, 1] -> TokenizerLoss."""
    if kind not in RECONSTRUCTION:
        raise ValueError(f"reconstruction loss {kind!r} is unknown; use one of {', '.join(RECONSTRUCTION)}")
    mse = F.mse_loss(output.reconstruction, images)
    recon = mse if kind == "mse" else F.l1_loss(output.reconstruction, images)
    total = recon + sum(output.losses.values(), torch.zeros((), device=images.device))
    return TokenizerLoss(total, kind, recon, mse.detach(), psnr_from_mse(mse.detach()), dict(output.losses))


def generator_gan_loss(logits_fake: torch.Tensor, kind: str) -> torch.Tensor:
    """The generator's adversarial term: hinge -E[D(x_hat)], or non-saturating -E[log sigmoid(D(x_hat))]."""
    return -logits_fake.mean() if kind == "hinge" else F.softplus(-logits_fake).mean()


def discriminator_gan_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str) -> torch.Tensor:
    """Half the sum of the real and fake terms, as taming's hinge_d_loss and vanilla_d_loss."""
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over the processes of a distributed run (itself on one process): a term that a
    batch statistic decides is then the one a single process would compute on the whole batch."""
    return reduce(tensor.detach(), reduction="mean")


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float,
                    across: Callable[[torch.Tensor], torch.Tensor] = mean_over_processes) -> torch.Tensor:
    """VQGAN eq. 7: lambda = |grad_GL rec_loss| / (|grad_GL gan_loss| + 1e-4), GL the decoder's last layer,
    clamped to [0, max_weight]; the gradients are averaged over processes first (as DDP averages the rest)."""
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    gan_grad, = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    rec_grad, gan_grad = across(rec_grad), across(gan_grad)
    return (rec_grad.norm() / (gan_grad.norm() + ADAPTIVE_EPS)).clamp(0.0, max_weight).detach()


def feature_matching(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """pix2pixHD's feature-matching loss (eq. 4): the mean over layers of the L1 distance between the
    discriminator's features of the images (targets, no gradient) and of their reconstructions."""
    return sum(F.l1_loss(f, r.detach()) for r, f in zip(real, fake)) / len(real)


class Adversary(nn.Module):
    """What the discriminator's optimizer trains and the checkpoints keep: the discriminator, and the
    running means of its logits on images and on reconstructions that LeCam anchors to."""

    def __init__(self, discriminator: nn.Module, lecam_decay: float = 0.99):
        super().__init__()
        self.discriminator = discriminator
        self.lecam_decay = lecam_decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def forward(self, images: torch.Tensor, features: bool = False):
        return self.discriminator(images, features)

    @torch.no_grad()
    def update_anchors(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        """Move the running means toward this step's mean logits (over all processes)."""
        self.ema_real.lerp_(mean_over_processes(logits_real.float().mean()), 1.0 - self.lecam_decay)
        self.ema_fake.lerp_(mean_over_processes(logits_fake.float().mean()), 1.0 - self.lecam_decay)

    def lecam(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """R_LC (Tseng et al. 2021, eq. 3), one-sided as in their code (lecam-gan `lecam_reg`): real logits
        held down to the fakes' running mean, fake logits up to the reals'."""
        return (F.relu(logits_real - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - logits_fake).pow(2).mean())


def frozen_call(module: nn.Module, *args, **kwargs):
    """`module(*args, **kwargs)` through detached parameters: gradients reach the inputs, never the module
    (the generator's loss through the discriminator must not train the discriminator)."""
    detached = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, detached, args, kwargs)


class VQGANLoss:
    """The tokenizer's loss as `cfg` (tokenizer.loss) asks: `perceptual` is the LPIPS module when
    perceptual_weight > 0, `adversary` the unwrapped Adversary when the discriminator is enabled."""

    def __init__(self, cfg: LossConfig, perceptual: nn.Module | None = None, adversary: Adversary | None = None):
        self.cfg, self.perceptual, self.adversary = cfg, perceptual, adversary

    def adversarial_at(self, step: int) -> bool:
        """Whether the discriminator trains, and the generator's adversarial terms count, at `step` (0-based)."""
        return self.adversary is not None and step >= self.cfg.adversarial.start

    def generator(self, images: torch.Tensor, output: VQVAEOutput, step: int,
                  last_layer: torch.Tensor) -> TokenizerLoss:
        """The tokenizer's loss at `step`; `last_layer` is the decoder's last weight (for eq. 7)."""
        result = tokenizer_loss(images, output, self.cfg.reconstruction)
        rec = result.reconstruction
        if self.perceptual is not None:
            result.perceptual = self.perceptual.to(images.device)(images, output.reconstruction).mean()
            rec = rec + self.cfg.perceptual_weight * result.perceptual
            result.loss = result.loss + self.cfg.perceptual_weight * result.perceptual
        if self.adversarial_at(step):
            self._add_adversarial(result, images, output.reconstruction, rec, last_layer)
        return result

    def _add_adversarial(self, result: TokenizerLoss, images: torch.Tensor, reconstruction: torch.Tensor,
                         rec: torch.Tensor, last_layer: torch.Tensor) -> None:
        """The adversarial and feature-matching terms, through the discriminator's detached weights."""
        adv = self.cfg.adversarial
        if adv.feature_matching_weight > 0:
            logits, maps = frozen_call(self.adversary, torch.cat([images, reconstruction]), features=True)
            logits_fake = logits.chunk(2)[1]
            halves = [m.chunk(2) for m in maps]  # GroupNorm: each image's features as if judged alone
            result.feature_matching = feature_matching([real for real, _ in halves], [fake for _, fake in halves])
            result.loss = result.loss + adv.feature_matching_weight * result.feature_matching
        else:
            logits_fake = frozen_call(self.adversary, reconstruction)
        if adv.weight > 0:
            result.g_loss = generator_gan_loss(logits_fake, adv.loss)
            # The pixel and perceptual terms against the GAN term, on the decoder's last layer (eq. 7).
            weight = adaptive_weight(rec, result.g_loss, last_layer, adv.max_adaptive_weight) * adv.weight
            result.adaptive_weight = weight
            result.loss = result.loss + weight * result.g_loss

    def discriminator(self, images: torch.Tensor, reconstruction: torch.Tensor,
                      adversary: nn.Module) -> DiscriminatorLoss:
        """The discriminator's loss; `adversary` is the prepared (e.g. DDP-wrapped) Adversary, which judges
        the images and their detached reconstructions in one batch (each image on its own: GroupNorm)."""
        adv = self.cfg.adversarial
        logits_real, logits_fake = adversary(torch.cat([images, reconstruction.detach()])).chunk(2)
        result = DiscriminatorLoss(discriminator_gan_loss(logits_real, logits_fake, adv.loss),
                                   logits_real.detach().mean(), logits_fake.detach().mean())
        if adv.lecam_weight > 0:
            # Anchors first, then the penalty against them, as lecam-gan's train_fns does.
            self.adversary.update_anchors(logits_real, logits_fake)
            result.lecam = self.adversary.lecam(logits_real, logits_fake)
            result.d_loss = result.d_loss + adv.lecam_weight * result.lecam
        return result
