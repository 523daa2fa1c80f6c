"""The one style of the models' configs: every setting typed and ranged, one line naming the key.

`from __future__ import annotations`, as in the model modules, so that `Toy` is checked as they are."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from core.config import rule_of, setting
from core.errors import VqgenError
from core.model_config import ModelConfigError, check_settings
from eval.classifier import ClassifierConfig
from stage1_vqvae.model import VQVAEConfig
from stage2_prior.pixelcnn import PixelCNNConfig

MODEL_CONFIGS = [VQVAEConfig, PixelCNNConfig, ClassifierConfig]


@pytest.mark.parametrize("cls", MODEL_CONFIGS, ids=lambda cls: cls.__name__)
def test_every_numeric_model_setting_has_a_range(cls):
    own = inspect.get_annotations(cls, eval_str=True)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        values = default if isinstance(default, tuple) else (default,)
        if f.name in own and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            assert rule_of(f).describe(), f"{cls.__name__}.{f.name} has no range"


@pytest.mark.parametrize("cls", MODEL_CONFIGS, ids=lambda cls: cls.__name__)
def test_defaults_keep_their_own_rules_and_round_trip(cls, tmp_path):
    cls().save_pretrained(tmp_path)
    settings = [cls.from_pretrained(tmp_path).to_dict(), cls().to_dict()]
    for d in settings:
        d.pop("transformers_version")  # None until the config is saved
    assert settings[0] == settings[1]


@strict
class Toy(PreTrainedConfig):
    model_type = "vqgen_test_toy"

    width: int = setting(4, "channels", ge=1)
    rate: float = setting(0.5, "a probability", ge=0, le=1)
    sizes: tuple[int, ...] | list[int] = setting((1, 2), "per level", ge=1, min_length=1)

    def __post_init__(self, **kwargs):
        check_settings(self, "toy")
        super().__post_init__(**kwargs)


@pytest.mark.parametrize(
    "changes, message",
    [({"width": 0}, "toy config: model.width must be >= 1, got 0 (channels); fix the value"),
     ({"rate": float("inf")}, "toy config: model.rate must be a finite number in [0, 1], got inf (a probability); fix the value"),
     ({"sizes": []}, "toy config: model.sizes must be at least 1 value(s), each >= 1, got () (per level); fix the value"),
     ({"width": "4"}, "toy config: 'model.width' must be int, got '4'; fix the value")],
)
def test_a_bad_value_is_one_model_config_error(changes, message):
    with pytest.raises(ModelConfigError) as err:
        Toy(**changes)
    assert str(err.value) == message
    assert isinstance(err.value, VqgenError) and isinstance(err.value, ValueError)


def test_values_are_converted_where_that_is_lossless():
    toy = Toy(rate=1, sizes=[3, 4])
    assert toy.rate == 1.0 and isinstance(toy.rate, float) and toy.sizes == (3, 4)
