"""A prior's transformers config from preset values plus the YAML `model:` overrides.

Override keys are checked against the config class's signature first (a transformers config would
keep a misspelt key as a silent attribute), and the config's own validation errors become one-line
`VqgenError`s.
"""

from __future__ import annotations

from collections.abc import Iterable

from huggingface_hub.errors import StrictDataclassError
from transformers import PreTrainedConfig

from core.config import Rule, check_kwargs
from core.errors import VqgenError

POSITIVE = Rule(ge=1)


def merge_overrides(cls: type[PreTrainedConfig], defaults: dict, overrides: dict) -> dict:
    """`defaults` updated with `overrides`, whose keys must be fields of `cls`."""
    return {**defaults, **check_kwargs(cls, overrides, source=f"prior.model ({cls.__name__})")}


def build_config(cls: type[PreTrainedConfig], kwargs: dict) -> PreTrainedConfig:
    try:
        return cls(**kwargs)
    except VqgenError:
        raise  # our own configs name the key themselves (core/model_config.py)
    except (ValueError, TypeError, StrictDataclassError) as err:
        reason = str(err).strip().splitlines()[-1]
        raise VqgenError(f"prior.model: invalid {cls.__name__} ({reason}); fix the value") from None


def positive_problem(values: dict, keys: Iterable[str]) -> str | None:
    """The first size in `keys` below 1 ('num_hidden_layers must be >= 1, got 0'), or None. Sizes
    must be >= 1: transformers divides by the head count and makes tensors of these sizes, so 0 or a
    negative size would end in a ZeroDivisionError, a torch traceback or a silently odd model."""
    for key in keys:
        if problem := POSITIVE.problem(values[key]):
            return f"{key} {problem}, got {values[key]!r}"
    return None


def check_positive(kwargs: dict, keys: Iterable[str]) -> None:
    if problem := positive_problem(kwargs, keys):
        raise VqgenError(f"prior.model.{problem}; fix the value")


def check_at_least(kwargs: dict, key: str, needed: int, reason: str) -> None:
    """An override of `key` below `needed` (the vocabulary or sequence the codes need): one line."""
    if kwargs[key] < needed:
        raise VqgenError(f"prior.model.{key}: {kwargs[key]} is {reason}; remove the override or set it >= {needed}")
