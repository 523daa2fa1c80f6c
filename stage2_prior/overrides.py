"""A prior's transformers config from preset values plus the YAML `model:` overrides.

Override keys are checked against the config class's signature first (a transformers config would
keep a misspelt key as a silent attribute), and the config's own validation errors become one-line
`VqgenError`s.
"""

from __future__ import annotations

from huggingface_hub.errors import StrictDataclassError
from transformers import PreTrainedConfig

from vqgen.config import check_kwargs
from vqgen.errors import VqgenError


def merge_overrides(cls: type[PreTrainedConfig], defaults: dict, overrides: dict) -> dict:
    """`defaults` updated with `overrides`, whose keys must be fields of `cls`."""
    return {**defaults, **check_kwargs(cls, overrides, source=f"prior.model ({cls.__name__})")}


def build_config(cls: type[PreTrainedConfig], kwargs: dict) -> PreTrainedConfig:
    try:
        return cls(**kwargs)
    except VqgenError:
        raise  # our own configs name the key themselves (vqgen/model_config.py)
    except (ValueError, TypeError, StrictDataclassError) as err:
        reason = str(err).strip().splitlines()[-1]
        raise VqgenError(f"prior.model: invalid {cls.__name__} ({reason}); fix the value") from None
