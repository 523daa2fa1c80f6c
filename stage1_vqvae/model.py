"""The VQ-VAE tokenizer (van den Oord et al. 2017): encoder -> vector quantizer -> decoder.

A transformers `PreTrainedModel`, so `save_pretrained` writes config.json + model.safetensors and the
folder reloads with `VQVAE.from_pretrained` or `AutoModel.from_pretrained` (registration happens in
`stage1_vqvae/__init__.py`). Layout as in taming-transformers' VQModel and LlamaGen's
`tokenizer/tokenizer_image/vq_model.py`; the blocks live in `stage1_vqvae/blocks.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from stage1_vqvae.blocks import Decoder, Encoder
from stage1_vqvae.quantize import QuantizerConfig, VectorQuantizer
from vqgen.config import setting
from vqgen.errors import VqgenError
from vqgen.model_config import check_settings, refuse

logger = logging.getLogger(__name__)

MODEL_TYPE = "vqgen_vqvae"
MAX_LEVELS = 6  # resolutions in channel_mult: factor 32 already turns 256 px into 8x8 codes

# Named architectures; each lists only what differs from the VQVAEConfig defaults ("small", the
# Fashion-MNIST/MNIST tokenizer: 32x32 -> 8x8 codes, K=512, trains on a CPU in minutes).
PRESETS: dict[str, dict] = {
    "tiny": {"base_channels": 8, "channel_mult": (1, 2), "code_dim": 16, "codebook_size": 64},
    "small": {},
    # CIFAR-10-sized colour images: wider, two blocks per level, attention at 8x8.
    "base": {"base_channels": 64, "channel_mult": (1, 2, 2), "num_res_blocks": 2, "attn_at_lowest": True, "codebook_size": 1024},
    # 128-256 px images, factor 16 as in LlamaGen's VQ-16, with its 8-dim l2-normalised lookup.
    "large": {"base_channels": 64, "channel_mult": (1, 1, 2, 2, 4), "num_res_blocks": 2, "attn_at_lowest": True,
              "code_dim": 256, "codebook_size": 8192, "lookup_dim": 8},
}


@strict  # a dataclass with checks on construction, as transformers' own configs are (vqgen/model_config.py)
class VQVAEConfig(PreTrainedConfig):
    """Architecture of the tokenizer; `channel_mult` has one entry per resolution, so the grid is
    image_size / 2**(len(channel_mult) - 1) on each side. Quantizer fields go to `QuantizerConfig`."""

    model_type = MODEL_TYPE

    in_channels: int = setting(1, "image channels: 1 for grey, 3 for colour images", ge=1)
    image_size: int = setting(32, "image side in pixels, a multiple of the downsampling factor", ge=1)
    base_channels: int = setting(16, "channels of the first level, e.g. 32 or 64", ge=1)
    channel_mult: tuple[int, ...] | list[int] = setting(
        (1, 2, 4), "width multiplier per level; each level after the first halves the image", ge=1, min_length=1)
    num_res_blocks: int = setting(1, "residual blocks per level", ge=1)
    attn_at_lowest: bool = setting(False, "self-attention at the lowest resolution")
    code_dim: int = setting(64, "D, the channels of a code vector", ge=1)
    codebook_size: int = setting(512, "K, the number of codes", ge=2)
    beta: float = setting(0.25, "commitment weight (VQ-VAE eq. 3)", ge=0)
    ema: bool = setting(True, "EMA codebook; false: learned with a codebook loss")
    codebook_decay: float = setting(0.99, "EMA decay of the codebook", ge=0, lt=1)
    kmeans_init: bool = setting(True, "codebook from k-means on the first training batch")
    restart_after_steps: int = setting(20, "restart codes idle this many training steps; 0: never", ge=0)
    lookup_dim: int = setting(0, "0: look up in D dims; else an l2-normalised lookup in this many", ge=0)

    def __post_init__(self, **kwargs):
        check_settings(self, "tokenizer")
        if len(self.channel_mult) > MAX_LEVELS:
            raise refuse("tokenizer", "channel_mult", self.channel_mult, f"must have 1 to {MAX_LEVELS} entries")
        if self.image_size % self.downsample_factor:
            raise refuse("tokenizer", "image_size", self.image_size,
                         f"must be a multiple of the downsampling factor {self.downsample_factor}")
        super().__post_init__(**kwargs)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def grid_size(self) -> int:
        """h = w of the code grid for `image_size` images."""
        return self.image_size // self.downsample_factor

    def quantizer_config(self) -> QuantizerConfig:
        return QuantizerConfig(
            codebook_size=self.codebook_size, dim=self.code_dim, beta=self.beta, ema=self.ema,
            decay=self.codebook_decay, kmeans_init=self.kmeans_init,
            restart_after_steps=self.restart_after_steps, lookup_dim=self.lookup_dim,
        )


@dataclass
class VQVAEOutput(ModelOutput):
    reconstruction: torch.Tensor | None = None  # (B, C, H, W) in [-1, 1]
    codes: torch.Tensor | None = None  # (B, h, w) int64 in [0, K)
    losses: dict[str, torch.Tensor] | None = None  # the quantizer's terms ("commitment", ["codebook"])
    perplexity: torch.Tensor | None = None  # exp(entropy) of this batch's code histogram
    usage: torch.Tensor | None = None  # share of the K codes in recent use (see QuantizerOutput)


def straight_through_clamp(x: torch.Tensor) -> torch.Tensor:
    """clamp(x, -1, 1) forward, identity backward.

    Why not tanh: Fashion-MNIST is mostly exact -1 background, which tanh only reaches as its input
    goes to -inf, with vanishing gradients on the way. Why not a plain clamp: a pixel pushed past +-1
    while its target lies inside would get zero gradient and stay stuck. This keeps outputs in
    [-1, 1] and the gradient of the MSE always pulls the raw value toward the target.
    """
    # Written so the forward value is bit-identical to x.clamp(-1, 1) (x - x.detach() is exactly 0).
    return x.detach().clamp(-1.0, 1.0) + (x - x.detach())


class VQVAE(PreTrainedModel):
    """images (B, C, H, W) in [-1, 1] <-> codes (B, h, w) in [0, K), h = H / downsample_factor."""

    config_class = VQVAEConfig
    base_model_prefix = "vqvae"
    main_input_name = "images"

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        arch = (config.base_channels, config.channel_mult, config.num_res_blocks, config.attn_at_lowest)
        self.encoder = Encoder(config.in_channels, *arch, out_dim=config.code_dim)
        self.quantizer = VectorQuantizer(config.quantizer_config())
        self.decoder = Decoder(config.in_channels, *arch, in_dim=config.code_dim)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # transformers' default draws convs from N(0, 0.02), which starves a deep conv net of signal;
        # use PyTorch's own default (kaiming uniform, a=sqrt(5)) instead. The guarded `init`
        # functions leave weights loaded by from_pretrained alone.
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            init.kaiming_uniform_(module.weight, a=5**0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, torch.nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def forward(self, images: torch.Tensor) -> VQVAEOutput:
        """images (B, C, H, W) -> VQVAEOutput(reconstruction (B, C, H, W), codes (B, h, w), losses, ...).

        In training mode the quantizer also updates its codebook (EMA, k-means init, restarts)."""
        self._check_images(images)
        q = self.quantizer(self.encoder(images))
        reconstruction = straight_through_clamp(self.decoder(q.z_q))
        return VQVAEOutput(reconstruction, q.indices, q.losses, q.perplexity, q.usage)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] -> codes (B, h, w) int64. Never changes the codebook."""
        self._check_images(images)
        was_training = self.quantizer.training
        self.quantizer.eval()  # a training-mode quantizer would update its EMA and restart codes
        try:
            return self.quantizer(self.encoder(images)).indices
        finally:
            self.quantizer.train(was_training)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) integers in [0, K) -> images (B, C, H, W) in [-1, 1]."""
        k = self.config.codebook_size
        if codes.ndim != 3 or codes.dtype.is_floating_point:
            raise VqgenError(f"decode_codes: expected integer codes (B, h, w), got {tuple(codes.shape)} {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise VqgenError(
                f"decode_codes: codes span [{int(codes.min())}, {int(codes.max())}] but this tokenizer has "
                f"K={k} codes; use the tokenizer the codes were made with"
            )
        z_q = self.quantizer.lookup(codes.long().to(self.device))
        return self.decoder(z_q).clamp(-1.0, 1.0)

    def _check_images(self, images: torch.Tensor) -> None:
        c, f = self.config.in_channels, self.downsample_factor
        if images.ndim != 4 or images.shape[1] != c or images.shape[2] % f or images.shape[3] % f:
            raise VqgenError(
                f"tokenizer input: images of shape {tuple(images.shape)} do not fit this tokenizer; it takes "
                f"(B, {c}, H, W) with H and W multiples of {f} (set data.channels / data.image_size)"
            )
