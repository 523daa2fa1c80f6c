"""Gated PixelCNN prior over code grids.

van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders": gated
activations tanh(.) * sigmoid(.) with a learned class bias per gated layer (eq. 4), and a vertical
and a horizontal stack that together have no blind spot (sec. 2.2, fig. 1). Instead of masked
kernels the causal structure comes from shifts (as in PixelCNN++, Salimans et al. 2017, sec. 2.5):
vertical features at row i see rows <= i and reach the horizontal stack shifted down one row;
the horizontal stack starts from the input shifted right one column. Residual connections run
along the horizontal stack and skip connections to the output head (WaveNet style, as in the
VQ-VAE prior of van den Oord et al. 2017).

Two levels (VQ-VAE-2, Razavi et al. 2019; as rosinality/vq-vae-2-pytorch conditions its bottom
PixelSNAIL): one model holds a PixelCNN over the top grid and one over the bottom grid. The bottom
one sees the whole top grid through a conditioning stack: top codes -> embedding -> nearest
upsampling to the bottom grid -> residual convs -> s, and every bottom gated layer adds V * s, a
per-position bias (eq. 5), beside its class bias. The top grid is known before any bottom code is
drawn, so the stack may look everywhere. One model in one folder (rather than two priors) keeps a
two-level prior one `vqgen_prior.json` + `save_pretrained` folder like the GPT's, and one training
loss over both levels' tokens gives the per-level bits of `stage2_prior.next_token.by_level`.
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

from core.code_grids import LEVEL_NAMES, GridLevel
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

    codebook_size: int = setting(512, "K, the number of codes (two levels: of the bottom grid)", ge=1)
    num_classes: int = setting(0, "N; class index N is 'unconditional'", ge=0)
    grid_h: int = setting(8, "h, rows of the code grid (two levels: of the bottom grid)", ge=1)
    grid_w: int = setting(8, "w, columns of the code grid (two levels: of the bottom grid)", ge=1)
    # A config.json written before two levels lacks these: 0 reads it as the one-level prior it is.
    top_codebook_size: int = setting(0, "two levels: K of the top grid; 0: one level", ge=0)
    top_grid_h: int = setting(0, "two levels: rows of the top grid, dividing grid_h; 0: one level", ge=0)
    top_grid_w: int = setting(0, "two levels: columns of the top grid, dividing grid_w; 0: one level", ge=0)
    cond_layers: int = setting(2, "two levels: residual layers of the conditioning stack on the top codes", ge=0)
    hidden_size: int = setting(128, "channels of each gated layer", ge=1)
    num_layers: int = setting(12, "gated layers", ge=1)
    kernel_size: int = setting(5, "odd; the receptive field grows by kernel_size // 2 per layer", ge=3)
    head_size: int = setting(256, "channels of the output head", ge=1)
    initializer_range: float = setting(0.02, "std of the initial weights", ge=0)

    def __post_init__(self, **kwargs):
        check_settings(self, "prior")
        if self.kernel_size % 2 == 0:
            raise refuse("prior", "kernel_size", self.kernel_size, "must be odd")
        self._check_top()
        super().__post_init__(**kwargs)

    def _check_top(self) -> None:
        top = (self.top_codebook_size, self.top_grid_h, self.top_grid_w)
        if any(top) and not all(top):
            raise refuse("prior", "top_codebook_size, top_grid_h and top_grid_w", top,
                         "must all be 0 (one level) or all >= 1 (two levels)")
        for key, size, top_size in (("grid_h", self.grid_h, self.top_grid_h), ("grid_w", self.grid_w, self.top_grid_w)):
            if top_size and size % top_size:
                raise refuse("prior", key, size, f"must be a multiple of top_{key}={top_size} (the top grid is "
                             "upsampled onto the bottom one)")

    @property
    def two_levels(self) -> bool:
        return self.top_codebook_size > 0


@dataclass
class PixelCNNOutput(ModelOutput):
    logits: torch.Tensor | None = None  # (B, h, w, K); two levels: the top grid's (B, h_t, w_t, K_top)
    bottom_logits: torch.Tensor | None = None  # two levels: the bottom grid's (B, h, w, K)

    def level_logits(self) -> torch.Tensor | dict[str, torch.Tensor]:
        """The logits as the codes came in: one grid's, or {"top": ..., "bottom": ...}. (A dict cannot be
        a field: ModelOutput would spread its items over attributes.)"""
        if self.bottom_logits is None:
            return self.logits
        return dict(zip(LEVEL_NAMES[2], (self.logits, self.bottom_logits)))


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
    """One gated layer: (v, h, class index, conditioning features s or None) -> (v', h', skip)."""

    def __init__(self, dim: int, kernel: int, num_conditions: int, spatial: bool = False):
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
        # V * s of eq. 5 (a 1x1 conv: a per-position bias from the top grid's features), bottom level only.
        self.spatial_bias = nn.Conv2d(dim, 4 * dim, 1, bias=False) if spatial else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor, s: torch.Tensor | None = None):
        bias = rearrange(self.class_bias(cond), "b c -> b c 1 1")
        if s is not None:
            bias = bias + self.spatial_bias(s)
        bias_v, bias_h = bias.chunk(2, dim=1)
        v_pre = self.v_conv(F.pad(v, self.v_pad))
        # Shift down so the horizontal stack at row i only gets rows < i (no leak of row i).
        h_pre = self.h_conv(F.pad(h, self.h_pad)) + self.v_to_h(down_shift(v_pre))
        gated = gate(h_pre + bias_h)
        return gate(v_pre + bias_v), h + self.h_out(gated), self.skip(gated)


def gated_stack(config: PixelCNNConfig, codebook_size: int, spatial: bool) -> dict[str, nn.Module]:
    """The modules of one level's PixelCNN over `codebook_size` codes: embed, gated layers, head."""
    dim = config.hidden_size
    return {
        "embed": nn.Embedding(codebook_size, dim),
        "layers": nn.ModuleList(GatedLayer(dim, config.kernel_size, config.num_classes + 1, spatial)
                                for _ in range(config.num_layers)),
        "head": nn.Sequential(nn.ReLU(), nn.Conv2d(dim, config.head_size, 1), nn.ReLU(),
                              nn.Conv2d(config.head_size, codebook_size, 1)),
    }


def stack_logits(stack: nn.Module, codes: torch.Tensor, labels: torch.Tensor,
                 s: torch.Tensor | None = None) -> torch.Tensor:
    """One level's PixelCNN (a module holding `gated_stack`'s modules): codes (B, h, w), class indices
    (B,), conditioning features s (B, D, h, w) or None -> logits (B, h, w, K); logits at (i, j) depend
    only on raster-earlier codes of this grid (and on s anywhere)."""
    x = rearrange(stack.embed(codes), "b h w d -> b d h w")
    v, h = x, right_shift(x)  # h at (i, j) starts from the code at (i, j-1)
    skip = torch.zeros_like(x)
    for layer in stack.layers:
        v, h, skip_out = layer(v, h, labels, s)
        skip = skip + skip_out
    return rearrange(stack.head(skip), "b k h w -> b h w k")


class GatedStack(nn.Module):
    """The bottom level's PixelCNN, its gated layers biased by the conditioning features."""

    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        for name, module in gated_stack(config, config.codebook_size, spatial=True).items():
            self.add_module(name, module)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return stack_logits(self, codes, labels, s)


class TopCondition(nn.Module):
    """The conditioning stack: top codes (B, h_t, w_t) -> features s (B, D, h, w) on the bottom grid.

    Nearest upsampling keeps each bottom position on its own top cell, as rosinality's
    F.interpolate of the top condition does; the residual 3x3 convs then mix in the neighbouring
    cells at the bottom resolution (the top grid is whole, so they need no causal mask)."""

    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        dim = config.hidden_size
        self.size = (config.grid_h, config.grid_w)
        self.embed = nn.Embedding(config.top_codebook_size, dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, dim, 1))
            for _ in range(config.cond_layers)
        )

    def forward(self, top: torch.Tensor) -> torch.Tensor:
        s = F.interpolate(rearrange(self.embed(top), "b h w d -> b d h w"), size=self.size, mode="nearest")
        for block in self.blocks:
            s = s + block(s)
        return s


class PixelCNNPrior(PreTrainedModel):
    config_class = PixelCNNConfig
    base_model_prefix = "pixelcnn"
    main_input_name = "codes"

    def __init__(self, config: PixelCNNConfig):
        super().__init__(config)
        # The first level's network (one level: the only one; two: the top's) sits at the root, so a
        # one-level folder keeps the weight names (embed.*, layers.*, head.*) it had before two levels.
        first = config.top_codebook_size if config.two_levels else config.codebook_size
        for name, module in gated_stack(config, first, spatial=False).items():
            self.add_module(name, module)
        if config.two_levels:
            self.condition = TopCondition(config)
            self.bottom = GatedStack(config)
        self.post_init()

    def top_logits(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The first level's logits: codes (B, h, w) (two levels: the top grid (B, h_t, w_t)), class
        indices (B,) -> (B, h, w, K) (two levels: K_top)."""
        return stack_logits(self, codes, labels)

    def forward(self, codes: torch.Tensor | dict[str, torch.Tensor], labels: torch.Tensor | None = None,
                **kwargs) -> PixelCNNOutput:
        """codes (B, h, w) int64 in [0, K) (two levels: {"top": (B, h_t, w_t), "bottom": (B, h, w)}),
        labels (B,) int64 class indices in [0, N] (N, or None: unconditional) -> logits (B, h, w, K)
        (two levels: the top's, and bottom_logits). Logits at (i, j) depend only on raster-earlier codes of their grid;
        the bottom's also on the whole top grid (teacher forcing: the true one in training)."""
        if labels is None:
            batch = codes.shape[0] if isinstance(codes, torch.Tensor) else codes[LEVEL_NAMES[2][0]].shape[0]
            labels = torch.full((batch,), self.config.num_classes, dtype=torch.long, device=self.device)
        if not self.config.two_levels:
            return PixelCNNOutput(logits=self.top_logits(codes, labels))
        top, bottom = (codes[name] for name in LEVEL_NAMES[2])
        return PixelCNNOutput(logits=self.top_logits(top, labels),
                              bottom_logits=self.bottom(bottom, labels, self.condition(top)))


def build_pixelcnn(
    preset: str, codebook_size: int, num_classes: int, grid_h: int, grid_w: int, top: GridLevel | None = None, /,
    **overrides,
) -> PixelCNNPrior:
    """A fresh PixelCNN prior over (grid_h, grid_w) grids of K codes; with `top`, a two-level one whose
    bottom grid that is. `overrides` are `PixelCNNConfig` fields (checked against its signature)."""
    if preset not in PIXELCNN_PRESETS:
        raise VqgenError(
            f"prior.preset: unknown PixelCNN preset '{preset}'; choose one of {', '.join(PIXELCNN_PRESETS)}"
        )
    data = code_settings(codebook_size, num_classes, grid_h, grid_w, top)
    kwargs = merge_overrides(PixelCNNConfig, {**PIXELCNN_PRESETS[preset], **data}, overrides)
    for key, value in data.items():
        if kwargs[key] != value:
            raise VqgenError(f"prior.model.{key}: {kwargs[key]} does not match the codes ({value}); remove it")
    return PixelCNNPrior(build_config(PixelCNNConfig, kwargs))


def code_settings(
    codebook_size: int, num_classes: int, grid_h: int, grid_w: int, top: GridLevel | None = None
) -> dict[str, int]:
    """The PixelCNNConfig fields that the codes fix (K, N, the grid; two levels: the top grid too), so
    a config must hold exactly these values for its codes."""
    return {"codebook_size": codebook_size, "num_classes": num_classes, "grid_h": grid_h, "grid_w": grid_w,
            "top_codebook_size": top.codebook_size if top else 0, "top_grid_h": top.grid_h if top else 0,
            "top_grid_w": top.grid_w if top else 0}
