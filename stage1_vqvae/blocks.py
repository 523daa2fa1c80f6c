"""The convolutional encoder and decoder of the VQ-VAE.

Modified from taming-transformers `taming/modules/diffusionmodules/model.py` (Encoder/Decoder,
Esser et al. 2021, "Taming Transformers", Sec. 3.1): residual blocks of GroupNorm + SiLU + 3x3 conv,
stride-2 convs down, nearest-neighbour upsampling + conv up, and optional single-head self-attention
at the lowest resolution. Kept lean (no timestep embedding, no dropout) so the Fashion-MNIST default
trains on a CPU in minutes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in taming/LlamaGen when the width allows it; narrow test models fall back to
    # the largest divisor of 32 that divides the width, so any width works.
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), with a 1x1 projection when the width changes."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the h*w positions of a (B, C, h, w) map, plus a residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w))


def middle(channels: int, attention: bool) -> nn.Sequential:
    """The lowest-resolution stage: res, [attention, res]."""
    if not attention:
        return nn.Sequential(ResBlock(channels, channels))
    return nn.Sequential(ResBlock(channels, channels), SelfAttention(channels), ResBlock(channels, channels))


class Encoder(nn.Module):
    """images (B, C, H, W) -> features (B, D, h, w), h = H / 2**(len(channel_mult) - 1)."""

    def __init__(self, in_channels: int, base: int, mult: tuple[int, ...], num_res: int, attention: bool,
                 out_dim: int):
        super().__init__()
        widths = [base * m for m in mult]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        c = widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res):
                layers.append(ResBlock(c, width))
                c = width
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.down = nn.Sequential(*layers)
        self.mid = middle(c, attention)
        self.norm_out, self.conv_out = norm(c), nn.Conv2d(c, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: avoids the checkerboard artefacts of transposed convs
    (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts")."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """quantized features (B, D, h, w) -> unbounded images (B, C, H, W); the mirror of `Encoder`."""

    def __init__(self, out_channels: int, base: int, mult: tuple[int, ...], num_res: int, attention: bool,
                 in_dim: int):
        super().__init__()
        widths = [base * m for m in reversed(mult)]
        c = widths[0]
        self.conv_in = nn.Conv2d(in_dim, c, 3, padding=1)
        self.mid = middle(c, attention)
        layers: list[nn.Module] = []
        for level, width in enumerate(widths):
            for _ in range(num_res):
                layers.append(ResBlock(c, width))
                c = width
            if level < len(widths) - 1:
                layers.append(Upsample(c))
        self.up = nn.Sequential(*layers)
        self.norm_out, self.conv_out = norm(c), nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class TopLevel(nn.Module):
    """The top of VQ-VAE-2 (Razavi et al. 2019, Fig. 2a), around the top quantizer: as rosinality's
    vq-vae-2-pytorch `VQVAE` (enc_t, dec_t, quantize_conv_b, upsample_t), over our blocks.

        encode(bottom (B, D, h, w))         -> top features (B, D, h/f, w/f)       (enc_t)
        condition(bottom, top_q)            -> the bottom quantizer's input (B, D, h, w)
        upsample(top_q (B, D, h/f, w/f))    -> (B, D, h, w), the decoder's top half (upsample_t)

    `width` is the channels of its convs, `factor` f = 2**n its extra downsampling.
    """

    def __init__(self, dim: int, width: int, factor: int, num_res: int, attention: bool):
        super().__init__()
        mult = (1,) * (factor.bit_length())  # n + 1 resolutions: n halvings
        self.encoder = Encoder(dim, width, mult, num_res, attention, out_dim=dim)
        self.decoder = Decoder(dim, width, mult, num_res, attention, in_dim=dim)
        # The bottom features beside the decoded top, mixed down to D (rosinality's quantize_conv_b).
        self.fuse = nn.Conv2d(2 * dim, dim, 1)
        # A transposed conv, as the paper's: kernel 2f, stride f, padding f/2 gives exactly h = f * h_top.
        self.up = nn.ConvTranspose2d(dim, dim, 2 * factor, stride=factor, padding=factor // 2)

    def encode(self, bottom: torch.Tensor) -> torch.Tensor:
        return self.encoder(bottom)

    def condition(self, bottom: torch.Tensor, top_q: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([bottom, self.decoder(top_q)], dim=1))

    def upsample(self, top_q: torch.Tensor) -> torch.Tensor:
        return self.up(top_q)
