"""The VQ-VAE tokenizer (van den Oord et al. 2017): encoder -> quantizer (VQ, FSQ or LFQ) -> decoder,
with one grid of codes, or two (`levels: 2`, VQ-VAE-2, Razavi et al. 2019: a small top grid for the
global structure, a bottom grid for the detail; see `stage1_vqvae.blocks.TopLevel`).

A transformers `PreTrainedModel`, so `save_pretrained` writes config.json + model.safetensors and the
folder reloads with `VQVAE.from_pretrained` or `AutoModel.from_pretrained` (registration happens in
`stage1_vqvae/__init__.py`). Layout as in taming-transformers' VQModel and LlamaGen's
`tokenizer/tokenizer_image/vq_model.py`; the blocks live in `stage1_vqvae/blocks.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from core.config import setting
from core.errors import VqgenError
from core.model_config import ModelConfigError, check_settings, refuse
from stage1_vqvae.blocks import Decoder, Encoder, TopLevel
from stage1_vqvae.quantizers import (
    DEFAULT_KIND,
    Quantizer,
    QuantizerConfig,
    QuantizerOutput,
    build_quantizer,
    quantizer_settings,
    settings_dict,
)

logger = logging.getLogger(__name__)

MODEL_TYPE = "vqgen_vqvae"
MAX_LEVELS = 6  # resolutions in channel_mult: factor 32 already turns 256 px into 8x8 codes
SINGLE, TOP, BOTTOM = "codes", "top", "bottom"  # level names: one level; two levels, coarse to fine

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
                              "{kind: fsq, levels: [8, 5, 5, 5]}; see README, Stage 1; with two levels, the bottom's")
    levels: int = setting(1, "grids of codes: 1, or 2 (VQ-VAE-2: a top grid model.top_factor times smaller, "
                          "and the bottom grid)", choices=(1, 2))
    top_factor: int = setting(2, "two levels: the top grid is this many times smaller than the bottom one on "
                              "each side", choices=(2, 4))
    top_quantizer: dict = setting({}, "two levels: the top's quantizer, as model.quantizer; keys of the same kind "
                                  "override the bottom's settings (e.g. {codebook_size: 256}); {}: the same as it")

    def __post_init__(self, **kwargs):
        self.quantizer = _with_legacy_keys(self.quantizer, kwargs)
        check_settings(self, "tokenizer")
        self.quantizer = _spelt_out(self.quantizer, "quantizer")
        if self.levels == 2:
            self.top_quantizer = _spelt_out(merge_quantizer(self.quantizer, self.top_quantizer), "top_quantizer")
        elif self.top_quantizer or self.top_factor != 2:
            key = "top_quantizer" if self.top_quantizer else "top_factor"
            raise refuse("tokenizer", key, getattr(self, key), "applies only with model.levels=2 (set it, or "
                         "leave this key out)")
        if len(self.channel_mult) > MAX_LEVELS:
            raise refuse("tokenizer", "channel_mult", self.channel_mult, f"must have 1 to {MAX_LEVELS} entries")
        if self.image_size % self.image_factor:
            raise refuse("tokenizer", "image_size", self.image_size,
                         f"must be a multiple of the downsampling factor {self.image_factor}{self._top_note()}")
        super().__post_init__(**kwargs)

    @property
    def downsample_factor(self) -> int:
        """Image side / the (bottom) grid's side."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def image_factor(self) -> int:
        """What the image side must be a multiple of: image side / the coarsest grid's side."""
        return self.downsample_factor * (self.top_factor if self.levels == 2 else 1)

    @property
    def level_specs(self) -> list[LevelSpec]:
        """Each level's grid and K for `image_size` images, coarse to fine: ["codes"], or ["top", "bottom"]."""
        grid = self.image_size // self.downsample_factor
        bottom_k = self.quantizer_settings().codebook_size
        if self.levels == 1:
            return [LevelSpec(SINGLE, grid, grid, bottom_k)]
        top = grid // self.top_factor
        return [LevelSpec(TOP, top, top, quantizer_settings(self.top_quantizer).codebook_size),
                LevelSpec(BOTTOM, grid, grid, bottom_k)]

    @property
    def grid_size(self) -> int:
        """h = w of the code grid for `image_size` images (one level only)."""
        self.refuse_two_levels("config.grid_size")
        return self.level_specs[0].grid_h

    @property
    def codebook_size(self) -> int:
        """K, derived from the quantizer's settings (FSQ: the product of its levels; LFQ: 2**bits); one level only."""
        self.refuse_two_levels("config.codebook_size")
        return self.quantizer_settings().codebook_size

    def quantizer_settings(self) -> QuantizerConfig:
        """The (bottom) quantizer's settings."""
        return quantizer_settings(self.quantizer)

    def refuse_two_levels(self, what: str) -> None:
        """One line for code that takes one grid of codes, given a two-level tokenizer."""
        if self.levels != 1:
            grids = ", ".join(f"{s.name} {s.grid_h}x{s.grid_w} K={s.codebook_size}" for s in self.level_specs)
            raise VqgenError(f"{what}: this is a two-level tokenizer ({grids}) and this code takes one grid of "
                             "codes; use encode_levels/decode_levels and level_specs, or a tokenizer with model.levels=1")

    def _top_note(self) -> str:
        return (f" ({self.downsample_factor} from model.channel_mult times model.top_factor={self.top_factor})"
                if self.levels == 2 else "")


@dataclass(frozen=True)
class LevelSpec:
    """One grid of codes of a tokenizer: its name, its shape (for `image_size` images) and K."""

    name: str
    grid_h: int
    grid_w: int
    codebook_size: int


def level_key(level: str, name: str) -> str:
    """A level's metric or loss term: `name` for a one-level tokenizer (as before levels existed),
    `level/name` for each level of two (e.g. top/commitment, bottom/usage)."""
    return name if level == SINGLE else f"{level}/{name}"


def _spelt_out(values: dict, key: str) -> dict:
    """The model.<key> mapping with every setting of its kind spelt out (as config.json stores it)."""
    try:
        return settings_dict(quantizer_settings(values))
    except VqgenError as err:
        # The registry names model.quantizer; the top's errors name their own key.
        raise ModelConfigError(str(err).replace("model.quantizer.", f"model.{key}.")) from None


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
        merged["quantizer"] = merge_quantizer(ours, theirs)
    return merged


def merge_quantizer(ours: dict, theirs: dict) -> dict:
    """Quantizer settings `theirs` on top of `ours`, key by key when of the same kind (or of no stated
    kind); settings for another kind do not carry over."""
    same_kind = "kind" not in theirs or theirs["kind"] == ours.get("kind", DEFAULT_KIND)
    return ours | theirs if same_kind else theirs


@dataclass
class VQVAEOutput(ModelOutput):
    reconstruction: torch.Tensor | None = None  # (B, C, H, W) in [-1, 1]
    codes: torch.Tensor | None = None  # (B, h, w) int64 in [0, K); one level only (two: see `levels`)
    losses: dict[str, torch.Tensor] | None = None  # the quantizers' named terms, each already weighted
    #                                                  (two levels: level_key names, top/commitment, ...)
    perplexity: torch.Tensor | None = None  # exp(entropy) of this batch's code histogram; one level only
    usage: torch.Tensor | None = None  # share of the K codes in recent use (see QuantizerOutput); one level only
    levels: dict[str, QuantizerOutput] | None = None  # each level's quantizer output, coarse to fine


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
    """images (B, C, H, W) in [-1, 1] <-> codes (B, h, w) in [0, K), h = H / downsample_factor; with
    two levels, top codes (B, h/f, w/f) and bottom codes (B, h, w), f = config.top_factor."""

    config_class = VQVAEConfig
    base_model_prefix = "vqvae"
    main_input_name = "images"

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        arch = (config.base_channels, config.channel_mult, config.num_res_blocks, config.attn_at_lowest)
        d = config.code_dim
        self.encoder = Encoder(config.in_channels, *arch, out_dim=d)
        if config.levels == 2:
            # Built before the bottom quantizer, so a one-level model draws its weights as it always did.
            width = config.base_channels * config.channel_mult[-1]
            self.top = TopLevel(d, width, config.top_factor, config.num_res_blocks, config.attn_at_lowest)
            self.top_quantizer = build_quantizer(quantizer_settings(config.top_quantizer), d)
        self.quantizer = build_quantizer(config.quantizer_settings(), d)  # the bottom's, with two levels
        self.decoder = Decoder(config.in_channels, *arch, in_dim=d * config.levels)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # transformers' default draws convs from N(0, 0.02), which starves a deep conv net of signal;
        # use PyTorch's own default (kaiming uniform, a=sqrt(5)) instead. The guarded `init`
        # functions leave weights loaded by from_pretrained alone.
        if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.Linear):
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

    @property
    def level_quantizers(self) -> dict[str, Quantizer]:
        """Each level's quantizer, coarse to fine."""
        if self.config.levels == 1:
            return {SINGLE: self.quantizer}
        return {TOP: self.top_quantizer, BOTTOM: self.quantizer}

    def forward(self, images: torch.Tensor) -> VQVAEOutput:
        """images (B, C, H, W) -> VQVAEOutput(reconstruction (B, C, H, W), codes (B, h, w), losses, ...);
        with two levels, `levels` holds each level's codes, perplexity and usage.

        In training mode the quantizers also update their state (VQ's codebook, the usage meters)."""
        self._check_images(images)
        levels = self._quantize(images)
        reconstruction = straight_through_clamp(self._decode([q.z_q for q in levels.values()]))
        losses = {level_key(level, term): value for level, q in levels.items() for term, value in q.losses.items()}
        if self.config.levels == 1:
            q = levels[SINGLE]
            return VQVAEOutput(reconstruction, q.indices, losses, q.perplexity, q.usage, levels)
        return VQVAEOutput(reconstruction, None, losses, levels=levels)

    def _quantize(self, images: torch.Tensor) -> dict[str, QuantizerOutput]:
        """images -> each level's quantizer output, coarse to fine (VQ-VAE-2 Fig. 2a with two levels:
        the top quantized first, the bottom quantized from its features and the decoded top)."""
        bottom = self.encoder(images)
        if self.config.levels == 1:
            return {SINGLE: self.quantizer(bottom)}
        top = self.top_quantizer(self.top.encode(bottom))
        return {TOP: top, BOTTOM: self.quantizer(self.top.condition(bottom, top.z_q))}

    def _decode(self, z_q: list[torch.Tensor]) -> torch.Tensor:
        """Each level's quantized vectors, coarse to fine -> unbounded images (B, C, H, W); the top's
        are upsampled to the bottom grid and set beside the bottom's (rosinality's `decode`)."""
        if self.config.levels == 1:
            return self.decoder(z_q[0])
        top, bottom = z_q
        return self.decoder(torch.cat([self.top.upsample(top), bottom], dim=1))

    @contextmanager
    def _quantizers_frozen(self) -> Iterator[None]:
        """Every quantizer in eval mode for the block: in training mode they would update their
        codebooks and meters."""
        modes = {name: q.training for name, q in self.level_quantizers.items()}
        for q in self.level_quantizers.values():
            q.eval()
        try:
            yield
        finally:
            for name, q in self.level_quantizers.items():
                q.train(modes[name])

    @torch.no_grad()
    def encode_levels(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, C, H, W) in [-1, 1] -> {level: codes (B, h, w) int64}, coarse to fine
        (`config.level_specs`' names). Never changes the codebooks."""
        self._check_images(images)
        with self._quantizers_frozen():
            return {level: q.indices for level, q in self._quantize(images).items()}

    @torch.no_grad()
    def decode_levels(self, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        """{level: codes (B, h, w) integers in [0, K)} (`config.level_specs`' names) -> images (B, C, H, W)
        in [-1, 1]."""
        specs = self.config.level_specs
        if sorted(codes) != sorted(s.name for s in specs):
            raise VqgenError(f"decode_levels: got codes for {', '.join(codes) or 'no level'}, but this tokenizer's "
                             f"levels are {', '.join(s.name for s in specs)}; pass one grid per level")
        for spec in specs:
            self._check_codes(codes[spec.name], spec.codebook_size, f"decode_levels: level {spec.name}")
        if self.config.levels == 2:
            self._check_grids(codes[TOP], codes[BOTTOM])
        quantizers = self.level_quantizers
        z_q = [quantizers[s.name].lookup(codes[s.name].long().to(self.device)) for s in specs]
        return self._decode(z_q).clamp(-1.0, 1.0)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] -> codes (B, h, w) int64 (one level). Never changes the codebook."""
        self.config.refuse_two_levels("encode")
        return self.encode_levels(images)[SINGLE]

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) integers in [0, K) -> images (B, C, H, W) in [-1, 1] (one level)."""
        self.config.refuse_two_levels("decode_codes")
        self._check_codes(codes, self.config.codebook_size, "decode_codes")
        z_q = self.quantizer.lookup(codes.long().to(self.device))
        return self.decoder(z_q).clamp(-1.0, 1.0)

    @staticmethod
    def _check_codes(codes: torch.Tensor, k: int, what: str) -> None:
        if codes.ndim != 3 or codes.dtype.is_floating_point:
            raise VqgenError(f"{what}: expected integer codes (B, h, w), got {tuple(codes.shape)} {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise VqgenError(
                f"{what}: codes span [{int(codes.min())}, {int(codes.max())}] but this tokenizer has "
                f"K={k} codes; use the tokenizer the codes were made with"
            )

    def _check_grids(self, top: torch.Tensor, bottom: torch.Tensor) -> None:
        f = self.config.top_factor
        if top.shape[0] != bottom.shape[0] or top.shape[1] * f != bottom.shape[1] or top.shape[2] * f != bottom.shape[2]:
            raise VqgenError(f"decode_levels: top codes {tuple(top.shape)} and bottom codes {tuple(bottom.shape)} do "
                             f"not fit together; this tokenizer's top grid is {f}x smaller on each side, same batch")

    def _check_images(self, images: torch.Tensor) -> None:
        c, f = self.config.in_channels, self.config.image_factor
        if images.ndim != 4 or images.shape[1] != c or images.shape[2] % f or images.shape[3] % f:
            raise VqgenError(
                f"tokenizer input: images of shape {tuple(images.shape)} do not fit this tokenizer; it takes "
                f"(B, {c}, H, W) with H and W multiples of {f} (set data.channels / data.image_size)"
            )
