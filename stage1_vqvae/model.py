"""The VQ-VAE tokenizer (van den Oord et al. 2017): encoder -> quantizer (VQ, FSQ or LFQ) -> decoder.

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

from core.config import setting
from core.errors import VqgenError
from core.model_config import ModelConfigError, check_settings, refuse
from stage1_vqvae.blocks import Decoder, Encoder
from stage1_vqvae.quantizers import (
    DEFAULT_KIND,
    Quantizer,
    QuantizerConfig,
    build_quantizer,
    quantizer_settings,
    settings_dict,
)

logger = logging.getLogger(__name__)

MODEL_TYPE = "vqgen_vqvae"
MAX_LEVELS = 6  # resolutions in channel_mult: factor 32 already turns 256 px into 8x8 codes

# Named architectures; each lists only what differs from the VQVAEConfig defaults ("small", the
# Fashion-MNIST/MNIST tokenizer: 32x32 -> 8x8 codes, K=512, trains on a CPU in minutes).
PRESETS: dict[str, dict] = {
    "tiny": {"base_channels": 8, "channel_mult": (1, 2), "code_dim": 16, "quantizer": {"codebook_size": 64}},
    "small": {},
    # CIFAR-10-sized colour images: wider, two blocks per level, attention at 8x8.
    "base": {"base_channels": 64, "channel_mult": (1, 2, 2), "num_res_blocks": 2, "attn_at_lowest": True,
             "quantizer": {"codebook_size": 1024}},
    # 128-256 px images, factor 16 as in LlamaGen's VQ-16, with its 8-dim l2-normalised lookup.
    "large": {"base_channels": 64, "channel_mult": (1, 1, 2, 2, 4), "num_res_blocks": 2, "attn_at_lowest": True,
              "code_dim": 256, "quantizer": {"codebook_size": 8192, "lookup_dim": 8}},
}

# config.json files written before `model.quantizer` held one VQ's settings at the top level; each
# such key -> its name in model.quantizer (kind vq). They load as they did, and only from files or
# Python: in YAML and flags they are refused with their new name (`moved_keys`).
LEGACY_QUANTIZER_KEYS = {"codebook_size": "codebook_size", "beta": "beta", "ema": "ema", "codebook_decay": "decay",
                         "kmeans_init": "kmeans_init", "restart_after_steps": "restart_after_steps",
                         "lookup_dim": "lookup_dim"}


@strict  # a dataclass with checks on construction, as transformers' own configs are (core/model_config.py)
class VQVAEConfig(PreTrainedConfig):
    """Architecture of the tokenizer; `channel_mult` has one entry per resolution, so the grid is
    image_size / 2**(len(channel_mult) - 1) on each side. `quantizer` is the `model.quantizer`
    mapping (stage1_vqvae/quantizers/registry.py), stored with every setting spelt out."""

    model_type = MODEL_TYPE

    in_channels: int = setting(1, "image channels: 1 for grey, 3 for colour images", ge=1)
    image_size: int = setting(32, "image side in pixels, a multiple of the downsampling factor", ge=1)
    base_channels: int = setting(16, "channels of the first level, e.g. 32 or 64", ge=1)
    channel_mult: tuple[int, ...] | list[int] = setting(
        (1, 2, 4), "width multiplier per level; each level after the first halves the image", ge=1, min_length=1)
    num_res_blocks: int = setting(1, "residual blocks per level", ge=1)
    attn_at_lowest: bool = setting(False, "self-attention at the lowest resolution")
    code_dim: int = setting(64, "D, the channels of a code vector", ge=1)
    quantizer: dict = setting({}, "the quantizer: kind (vq, fsq or lfq) and its settings, e.g. "
                              "{kind: fsq, levels: [8, 5, 5, 5]}; see README, Stage 1")

    def __post_init__(self, **kwargs):
        self.quantizer = _with_legacy_keys(self.quantizer, kwargs)
        check_settings(self, "tokenizer")
        try:
            self.quantizer = settings_dict(quantizer_settings(self.quantizer))
        except VqgenError as err:
            raise ModelConfigError(str(err)) from None
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

    @property
    def codebook_size(self) -> int:
        """K, derived from the quantizer's settings (FSQ: the product of its levels; LFQ: 2**bits)."""
        return self.quantizer_settings().codebook_size

    def quantizer_settings(self) -> QuantizerConfig:
        return quantizer_settings(self.quantizer)


def _with_legacy_keys(quantizer: dict, kwargs: dict) -> dict:
    """`quantizer`, or the model.quantizer mapping of the flat keys of an older config.json (popped
    from `kwargs`); both at once would leave it unclear which holds."""
    legacy = {new: kwargs.pop(old) for old, new in LEGACY_QUANTIZER_KEYS.items() if old in kwargs}
    if not legacy:
        return quantizer
    if quantizer:
        raise ModelConfigError(f"tokenizer config: model.quantizer and the old top-level quantizer keys "
                               f"({', '.join(legacy)}) are both set; move those keys into model.quantizer")
    return {"kind": "vq", **legacy}  # the only kind there was


def moved_keys(settings: dict, source: str) -> None:
    """Refuse a YAML or command-line `model:` section that uses a quantizer key at the top level,
    naming where it lives now."""
    moved = [key for key in settings if key in LEGACY_QUANTIZER_KEYS]
    if moved:
        where = ", ".join(f"model.{key} -> model.quantizer.{LEGACY_QUANTIZER_KEYS[key]}" for key in moved)
        raise VqgenError(f"{source}: the quantizer's settings moved into model.quantizer ({where}); move them there")


def merge_settings(preset: dict, overrides: dict) -> dict:
    """A preset's VQVAEConfig keywords with `overrides` on top. `quantizer` merges key by key when
    both are of the same kind; a preset's settings for another kind do not carry over."""
    merged = preset | overrides
    ours, theirs = preset.get("quantizer"), overrides.get("quantizer")
    if isinstance(ours, dict) and isinstance(theirs, dict):
        same_kind = theirs.get("kind", DEFAULT_KIND) == ours.get("kind", DEFAULT_KIND) or "kind" not in theirs
        merged["quantizer"] = ours | theirs if same_kind else theirs
    return merged


@dataclass
class VQVAEOutput(ModelOutput):
    reconstruction: torch.Tensor | None = None  # (B, C, H, W) in [-1, 1]
    codes: torch.Tensor | None = None  # (B, h, w) int64 in [0, K)
    losses: dict[str, torch.Tensor] | None = None  # the quantizer's named terms, each already weighted
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
        self.quantizer = build_quantizer(config.quantizer_settings(), config.code_dim)
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
        elif isinstance(module, Quantizer):
            # Buffers that are not saved (FSQ's grid, LFQ's bit values) hold garbage after loading.
            for name, value in module.constants().items():
                init.copy_(getattr(module, name), value)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def forward(self, images: torch.Tensor) -> VQVAEOutput:
        """images (B, C, H, W) -> VQVAEOutput(reconstruction (B, C, H, W), codes (B, h, w), losses, ...).

        In training mode the quantizer also updates its state (VQ's codebook, the usage meters)."""
        self._check_images(images)
        q = self.quantizer(self.encoder(images))
        reconstruction = straight_through_clamp(self.decoder(q.z_q))
        return VQVAEOutput(reconstruction, q.indices, q.losses, q.perplexity, q.usage)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] -> codes (B, h, w) int64. Never changes the codebook."""
        self._check_images(images)
        was_training = self.quantizer.training
        self.quantizer.eval()  # a training-mode quantizer would update its codebook and meters
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
