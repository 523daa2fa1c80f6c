"""Gated PixelCNN prior over code grids.

van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders": gated
activations tanh(.) * sigmoid(.) with a learned class bias per gated layer (eq. 4), and a vertical
and a horizontal stack that together have no blind spot (sec. 2.2, fig. 1). Instead of masked
kernels the causal structure comes from shifts (as in PixelCNN++, Salimans et al. 2017, sec. 2.5):
vertical features at row i see rows <= i and reach the horizontal stack shifted down one row;
the horizontal stack starts from the input shifted right one column. Residual connections run
along the horizontal stack and skip connections to the output head (WaveNet style, as in the
VQ-VAE prior of van den Oord et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from core.config import setting
from core.errors import VqgenError
from core.model_config import check_settings, refuse
from stage2_prior.overrides import build_config, merge_overrides

PIXELCNN_PRESETS: dict[str, dict[str, int]] = {
    "demo": {"hidden_size": 64, "num_layers": 6},
    "tiny": {"hidden_size": 64, "num_layers": 8},
    "small": {"hidden_size": 128, "num_layers": 12},
    "base": {"hidden_size": 256, "num_layers": 15},
    "large": {"hidden_size": 384, "num_layers": 20},
}


@strict  # a dataclass with checks on construction, as transformers' own configs are (core/model_config.py)
class PixelCNNConfig(PreTrainedConfig):
    model_type = "vqgen_pixelcnn"

    codebook_size: int = setting(512, "K, the number of codes", ge=1)
    num_classes: int = setting(0, "N; class index N is 'unconditional'", ge=0)
    grid_h: int = setting(8, "h, rows of the code grid", ge=1)
    grid_w: int = setting(8, "w, columns of the code grid", ge=1)
    hidden_size: int = setting(128, "channels of each gated layer", ge=1)
    num_layers: int = setting(12, "gated layers", ge=1)
    kernel_size: int = setting(5, "odd; the receptive field grows by kernel_size // 2 per layer", ge=3)
    head_size: int = setting(256, "channels of the output head", ge=1)
    initializer_range: float = setting(0.02, "std of the initial weights", ge=0)

    def __post_init__(self, **kwargs):
        check_settings(self, "prior")
        if self.kernel_size % 2 == 0:
            raise refuse("prior", "kernel_size", self.kernel_size, "must be odd")
        super().__post_init__(**kwargs)


@dataclass
class PixelCNNOutput(ModelOutput):
    logits: torch.Tensor | None = None  # (B, h, w, K)


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w): row i takes row i-1 (zeros on top), so it only sees rows above."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w): column j takes column j-1 (zeros on the left)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer: (v, h, class index) -> (v', h', skip)."""

    def __init__(self, dim: int, kernel: int, num_conditions: int):
        super().__init__()
        half = kernel // 2
        # Vertical: kernel (half+1, kernel) padded on top only -> row i sees rows i-half .. i.
        self.v_pad = (half, half, half, 0)
        self.v_conv = nn.Conv2d(dim, 2 * dim, (half + 1, kernel))
        self.v_to_h = nn.Conv2d(2 * dim, 2 * dim, 1)
        # Horizontal: kernel (1, half+1) padded on the left only -> column j sees j-half .. j.
        self.h_pad = (half, 0, 0, 0)
        self.h_conv = nn.Conv2d(dim, 2 * dim, (1, half + 1))
        self.h_out = nn.Conv2d(dim, dim, 1)
        self.skip = nn.Conv2d(dim, dim, 1)
        self.class_bias = nn.Embedding(num_conditions, 4 * dim)  # V^T h of eq. 4, per stack

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor):
        bias_v, bias_h = rearrange(self.class_bias(cond), "b c -> b c 1 1").chunk(2, dim=1)
        v_pre = self.v_conv(F.pad(v, self.v_pad))
        # Shift down so the horizontal stack at row i only gets rows < i (no leak of row i).
        h_pre = self.h_conv(F.pad(h, self.h_pad)) + self.v_to_h(down_shift(v_pre))
        gated = gate(h_pre + bias_h)
        return gate(v_pre + bias_v), h + self.h_out(gated), self.skip(gated)


class PixelCNNPrior(PreTrainedModel):
    config_class = PixelCNNConfig
    base_model_prefix = "pixelcnn"
    main_input_name = "codes"

    def __init__(self, config: PixelCNNConfig):
        super().__init__(config)
        dim = config.hidden_size
        self.embed = nn.Embedding(config.codebook_size, dim)
        self.layers = nn.ModuleList(
            GatedLayer(dim, config.kernel_size, config.num_classes + 1) for _ in range(config.num_layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(dim, config.head_size, 1), nn.ReLU(), nn.Conv2d(config.head_size, config.codebook_size, 1)
        )
        self.post_init()

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> PixelCNNOutput:
        """codes (B, h, w) int64 in [0, K), labels (B,) int64 class indices in [0, N] (N, or None:
        unconditional) -> logits (B, h, w, K); logits at (i, j) depend only on raster-earlier codes."""
        if labels is None:
            labels = torch.full(codes.shape[:1], self.config.num_classes, dtype=torch.long, device=codes.device)
        x = rearrange(self.embed(codes), "b h w d -> b d h w")
        v, h = x, right_shift(x)  # h at (i, j) starts from the code at (i, j-1)
        skip = torch.zeros_like(x)
        for layer in self.layers:
            v, h, s = layer(v, h, labels)
            skip = skip + s
        logits = self.head(skip)
        return PixelCNNOutput(logits=rearrange(logits, "b k h w -> b h w k"))


def build_pixelcnn(
    preset: str, codebook_size: int, num_classes: int, grid_h: int, grid_w: int, /, **overrides
) -> PixelCNNPrior:
    """A fresh PixelCNN prior; `overrides` are `PixelCNNConfig` fields (checked against its signature)."""
    if preset not in PIXELCNN_PRESETS:
        raise VqgenError(
            f"prior.preset: unknown PixelCNN preset '{preset}'; choose one of {', '.join(PIXELCNN_PRESETS)}"
        )
    data = {"codebook_size": codebook_size, "num_classes": num_classes, "grid_h": grid_h, "grid_w": grid_w}
    kwargs = merge_overrides(PixelCNNConfig, {**PIXELCNN_PRESETS[preset], **data}, overrides)
    for key, value in data.items():
        if kwargs[key] != value:
            raise VqgenError(f"prior.model.{key}: {kwargs[key]} does not match the codes ({value}); remove it")
    return PixelCNNPrior(build_config(PixelCNNConfig, kwargs))
