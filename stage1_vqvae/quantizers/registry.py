"""The one map from `model.quantizer.kind` to its settings class and its module.

    settings = quantizer_settings({"kind": "fsq", "levels": [8, 5, 5, 5]})   # FSQConfig, checked
    quantizer = build_quantizer(settings, dim=64)                             # FiniteScalarQuantizer

A YAML `model.quantizer:` section (or `--model.quantizer.key=value`) is a mapping with `kind`
(default vq) and that kind's settings; each setting is declared once, in its kind's config class.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from core.config import apply
from core.errors import VqgenError
from stage1_vqvae.quantizers.base import PREFIX, SOURCE, Quantizer, QuantizerConfig
from stage1_vqvae.quantizers.fsq import FiniteScalarQuantizer, FSQConfig
from stage1_vqvae.quantizers.lfq import LFQConfig, LookupFreeQuantizer
from stage1_vqvae.quantizers.vq import VectorQuantizer, VQConfig


class Kind(NamedTuple):
    settings: type[QuantizerConfig]
    module: type[Quantizer]


KINDS: dict[str, Kind] = {
    "vq": Kind(VQConfig, VectorQuantizer),
    "fsq": Kind(FSQConfig, FiniteScalarQuantizer),
    "lfq": Kind(LFQConfig, LookupFreeQuantizer),
}
DEFAULT_KIND = "vq"


def quantizer_settings(values: dict) -> QuantizerConfig:
    """A `model.quantizer` mapping -> the settings of its kind, every key, type and range checked;
    a mistake is one VqgenError that names the key."""
    values = dict(values)
    kind = values.pop("kind", DEFAULT_KIND)
    if kind not in KINDS:
        raise VqgenError(f"{SOURCE}: {PREFIX}kind={kind!r} is unknown; use one of {', '.join(KINDS)}")
    cls = KINDS[kind].settings
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise VqgenError(f"{SOURCE}: {', '.join(PREFIX + key for key in unknown)} is not a setting of the '{kind}' "
                         f"quantizer (its settings: {', '.join(known)}); set {PREFIX}kind or remove the key")
    return apply(cls(), values, SOURCE, prefix=PREFIX)


def settings_dict(settings: QuantizerConfig) -> dict:
    """The `model.quantizer` mapping of `settings`, every setting spelt out (as config.json stores it)."""
    values = dataclasses.asdict(settings)
    return {"kind": settings.kind, **{key: list(v) if isinstance(v, tuple) else v for key, v in values.items()}}


def build_quantizer(settings: QuantizerConfig, dim: int) -> Quantizer:
    """The quantizer of `settings` for encoder outputs of D = dim channels."""
    return KINDS[settings.kind].module(settings, dim)
