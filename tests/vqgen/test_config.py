from dataclasses import dataclass, field

import pytest

from vqgen.config import check_kwargs, load_config, parse_overrides
from vqgen.errors import VqgenError


@dataclass
class Inner:
    steps: int = 10
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    name: str | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    model: dict = field(default_factory=dict)
    flag: bool = False


def test_defaults_then_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  steps: 20\n  lr: 1\nmodel:\n  width: 8\n")
    cfg = load_config(Outer, path, ["--inner.steps=30", "--flag=true", "--inner.betas=[0.5, 0.6]"])
    assert cfg.inner.steps == 30 and cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.flag is True and cfg.model == {"width": 8} and cfg.inner.betas == (0.5, 0.6)


@pytest.mark.parametrize(
    "yaml_text,match",
    [("inner:\n  stepz: 1\n", "inner.stepz"), ("inner:\n  steps: fast\n", "inner.steps"),
     ("flag: 3\n", "flag"), ("inner: 3\n", "section"), ("- a\n", "mapping"), ("a: [\n", "YAML")],
)
def test_bad_yaml_names_file_and_key(tmp_path, yaml_text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(VqgenError, match=match) as err:
        load_config(Outer, path)
    assert str(path) in str(err.value)


def test_missing_file_and_bad_flag():
    with pytest.raises(VqgenError, match="not found"):
        load_config(Outer, "/nonexistent.yaml")
    with pytest.raises(VqgenError, match="--section.key=value"):
        parse_overrides(["--inner.steps"])


def test_optional_accepts_none_and_value():
    assert load_config(Outer, None, ["--inner.name=x"]).inner.name == "x"
    assert load_config(Outer, None, ["--inner.name=null"]).inner.name is None


def test_check_kwargs_against_signature():
    class Model:
        def __init__(self, width: int = 1, depth: int = 2, **kwargs):
            pass

    assert check_kwargs(Model, {"width": 3}, "x.yaml") == {"width": 3}
    with pytest.raises(VqgenError, match="widht"):
        check_kwargs(Model, {"widht": 3}, "x.yaml")
