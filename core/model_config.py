"""One style for the models' own configs: the tokenizer's, the PixelCNN prior's and the classifier's.

Each is a transformers `PreTrainedConfig`, which in transformers v5 is a strict dataclass (as
`LlamaConfig` is), so `save_pretrained`, `from_pretrained` and the Auto classes work as they do for
transformers' own models. Its fields are declared with `core.config.setting(default, help, ge=...)`,
the declaration every run setting uses, and its `__post_init__` starts with `check_settings`:

    @strict
    class PixelCNNConfig(PreTrainedConfig):
        hidden_size: int = setting(128, "channels of each layer", ge=1)

        def __post_init__(self, **kwargs):
            check_settings(self, "prior")
            super().__post_init__(**kwargs)

A value of the wrong type or out of range is then one line that names the key, before any weight
is made: "tokenizer config: model.code_dim must be >= 1, got 0 (...); fix the value".
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from transformers import PreTrainedConfig

from core.config import check_value, coerce
from core.errors import VqgenError


class ModelConfigError(VqgenError, ValueError):
    """A bad model setting: a `VqgenError` for the user, and the `ValueError` that transformers'
    config convention raises, for code written against that convention."""


def check_settings(config: PreTrainedConfig, what: str) -> None:
    """Check every field that `config`'s own class declares against its type and its `setting` rule,
    converting where that is lossless (int -> float, a JSON list -> tuple).

    Call it from `__post_init__`, not from a `validate_*` method: strict's `validate` would wrap our
    error in a multi-line StrictDataclassClassValidationError. Declare the config in a module with
    `from __future__ import annotations`: strict's own type checks, which raise a multi-line error
    before `__post_init__` runs, skip string annotations, so the types are checked here instead."""
    hints = inspect.get_annotations(type(config), eval_str=True)  # this class's fields only
    for f in dataclasses.fields(config):
        if f.name in hints:
            key = f"model.{f.name}"
            try:
                value = coerce(getattr(config, f.name), hints[f.name], key, f"{what} config")
                setattr(config, f.name, check_value(value, f, key, f"{what} config"))
            except VqgenError as err:
                raise ModelConfigError(str(err)) from None


def refuse(what: str, key: str, value: Any, rule: str) -> ModelConfigError:
    """The error for a rule that spans fields, worded as `check_settings` words its own."""
    return ModelConfigError(f"{what} config: model.{key} {rule}, got {value!r}; fix the value")
