import dataclasses
import re
import typing
from dataclasses import dataclass, field

import pytest
import yaml

from core.config import (
    Copies,
    Rule,
    apply,
    check,
    check_kwargs,
    help_of,
    leaves,
    load_config,
    parse_overrides,
    rule_of,
    setting,
    to_dict,
)
from core.errors import VqgenError


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


@dataclass
class Data:
    spec: str = "a"


@dataclass
class WithData:
    data: Data = field(default_factory=Data)


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


def test_a_sections_own_data_in_a_pipeline_yaml_is_refused(tmp_path):
    """tokenizer.data beside data: was silently overridden by data: (the pipeline refuses it too)."""
    path = tmp_path / "pipeline.yaml"
    path.write_text("data: {spec: x}\ninner: {data: {spec: y}}\n")
    with pytest.raises(VqgenError, match="inner.data") as err:
        load_config(WithData, path, section="inner", pipeline_keys=("data", "inner"))
    assert str(path) in str(err.value)


def test_binary_file_as_yaml_is_one_line(tmp_path):
    """A checkpoint or an image given as --config: named, not a UnicodeDecodeError traceback."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\xff\xfe\x00binary\x00")
    with pytest.raises(VqgenError, match="not a YAML text file") as err:
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


@dataclass
class Ranged:
    count: int = setting(1, "how many", ge=1)
    rate: float = setting(0.5, "a fraction", gt=0, lt=1)
    sizes: tuple[int, ...] = setting((2, 3), "sizes", ge=1, min_length=1)
    pair: tuple[float, float] = setting((0.0, 0.5), "a pair", length=2, ge=0, lt=1)
    n: int = setting(0, "0: all", ge=4, choices=(0,))
    mode: str = setting("no", "a mode", choices=("no", "yes"))
    scale: float = setting(1.0, "any finite number")
    items: list[int] = setting([1], "a list")


@dataclass
class Holder:
    inner: Inner = field(default_factory=Inner)
    ranged: Ranged = field(default_factory=Ranged)


@pytest.mark.parametrize(
    "key,value,words",
    [("count", 0, "must be >= 1"), ("count", -3, "must be >= 1"),
     ("rate", 0.0, "must be in (0, 1)"), ("rate", 1.0, "in (0, 1)"), ("rate", float("nan"), "finite"),
     ("scale", float("inf"), "must be a finite number"), ("scale", float("nan"), "finite"),
     ("sizes", [], "at least 1"), ("sizes", [2, 0], "each >= 1"),
     ("pair", [0.9], "2 values, each in [0, 1)"), ("pair", [0.9, 1.0], "2 values"), ("pair", [0.1, float("nan")], "2 values"),
     ("n", 2, "must be 0 or >= 4"), ("n", -1, "0 or >= 4"), ("mode", "maybe", "must be one of no, yes")],
)
def test_out_of_range_names_source_key_and_rule(tmp_path, key, value, words):
    with pytest.raises(VqgenError) as err:
        apply(Holder(), {"ranged": {key: value}}, source="x.yaml")
    message = str(err.value)
    assert message.startswith(f"x.yaml: ranged.{key} ") and words in message and "\n" not in message
    with pytest.raises(VqgenError, match="got"):  # the same rule for a config built in Python
        check(Holder(ranged=Ranged(**{key: value})))


@pytest.mark.parametrize("key,value", [("count", 1), ("rate", 1e-9), ("sizes", [1]), ("pair", [0, 0.999]),
                                       ("n", 0), ("n", 4), ("mode", "yes"), ("scale", -2.5)])
def test_in_range_values_pass(key, value):
    assert getattr(apply(Ranged(), {key: value}, source="x.yaml"), key) == (tuple(value) if key in ("sizes", "pair") else value)


def test_rule_text():
    assert Rule(ge=1).describe() == ">= 1" and Rule(gt=0, le=1).describe() == "in (0, 1]"
    assert Rule(lt=0.5).describe() == "< 0.5" and Rule(ge=2, choices=(0,)).describe() == "0 or >= 2"
    assert Rule(choices=("a", "b")).describe() == "one of a, b" and Rule().problem(float("nan")) == "must be a finite number"


def test_setting_keeps_help_and_copies_mutables():
    fields = {f.name: f for f in dataclasses.fields(Ranged)}
    assert help_of(fields["count"]) == "how many" and rule_of(fields["count"]) == Rule(ge=1)
    a, b = Ranged(), Ranged()
    a.items.append(2)
    assert b.items == [1]


@pytest.mark.parametrize("text", ["1e-3", "1.0e3", "-2E+2", "5e0"])
def test_yaml_1_1_float_text_is_a_float(tmp_path, text):
    # PyYAML reads 1e-3 as a string (YAML 1.1 wants a dot and a signed exponent).
    path = tmp_path / "c.yaml"
    path.write_text(f"inner:\n  lr: {text}\n")
    assert yaml.safe_load(path.read_text())["inner"]["lr"] == text
    assert load_config(Outer, path).inner.lr == float(text)
    assert load_config(Outer, None, [f"--inner.lr={text}"]).inner.lr == float(text)


@pytest.mark.parametrize("text", ["1e3", "ten", "2.0e1"])
def test_ints_take_no_text(text):
    with pytest.raises(VqgenError, match="inner.steps' must be int"):
        load_config(Outer, None, [f"--inner.steps={text}"])


def test_float_fields_refuse_other_text():
    with pytest.raises(VqgenError, match="must be float"):
        load_config(Outer, None, ["--inner.lr=fast"])


def test_errors_name_the_layer_that_holds_the_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("inner:\n  steps: 20\n")
    with pytest.raises(VqgenError, match=r"^command line: unknown setting '--inner\.stepz'"):
        load_config(Outer, path, ["--inner.stepz=3"])
    path.write_text("inner:\n  stepz: 20\n")
    with pytest.raises(VqgenError, match=rf"^{re.escape(str(path))}: unknown setting 'inner\.stepz'"):
        load_config(Outer, path, ["--inner.steps=3"])


def test_a_pipeline_yaml_gives_its_section_and_data(tmp_path):
    @dataclass
    class Stage:
        data: Inner = field(default_factory=Inner)
        flag: bool = False

    def load(text: str, *overrides: str, flags=None) -> Stage:
        path.write_text(text)
        return load_config(Stage, path, overrides, section="eval.stage", pipeline_keys=("data", "eval", "other"),
                           flags=flags)

    path = tmp_path / "pipeline.yaml"
    cfg = load("data:\n  steps: 7\neval:\n  stage:\n    flag: true\nother:\n  x: 1\n", "--data.lr=0.5",
               flags={"data.name": "n", "flag": None})
    assert cfg == Stage(data=Inner(steps=7, lr=0.5, name="n"), flag=True)
    assert load("data:\n  steps: 7\nother:\n  x: 1\n") == Stage(data=Inner(steps=7))  # no section of its own
    assert load("flag: true\n") == Stage(flag=True)  # a file of the stage's settings alone
    with pytest.raises(VqgenError, match=r"pipeline.yaml: unknown setting 'eval\.stage\.flagg'"):
        load("eval:\n  stage:\n    flagg: true\n")
    with pytest.raises(VqgenError, match=r"pipeline.yaml: unknown setting 'flagg'"):  # not a pipeline key: reported
        load("flagg: true\ndata:\n  steps: 7\n")
    with pytest.raises(VqgenError, match=r"'eval.stage' is a section"):
        load("eval:\n  stage: 3\n")


def test_cli_knows_the_pipeline_sections():
    from vqgen.cli import PIPELINE_SECTIONS
    from vqgen.pipeline import PipelineConfig

    assert PIPELINE_SECTIONS == tuple(f.name for f in dataclasses.fields(PipelineConfig))


def test_every_run_config_default_keeps_its_rules():
    from eval.classifier import ClassifierRunConfig
    from sampling.generate import SampleConfig
    from stage1_vqvae.train import TokenizerRunConfig
    from stage2_prior.train import PriorRunConfig
    from vqgen.pipeline import PipelineConfig

    for cls in (TokenizerRunConfig, PriorRunConfig, SampleConfig, ClassifierRunConfig, PipelineConfig):
        assert check(cls()) == cls()
    assert check(PipelineConfig()).tokenizer.train.steps >= 1


def test_every_number_and_choice_of_a_run_config_has_a_rule():
    from vqgen.pipeline import PipelineConfig

    def leaves(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from leaves(hints[f.name], f"{prefix}{f.name}.")
            else:
                yield prefix + f.name, hints[f.name], f

    unruled = [name for name, hint, f in leaves(PipelineConfig)
               if hint in (int, float) and rule_of(f) == Rule() and not name.endswith("cfg_scale")]
    assert not unruled
    assert all(help_of(f) for name, hint, f in leaves(PipelineConfig)), "every setting says what it does"


def test_copies_are_refused_in_any_layer_filled_and_left_out(tmp_path):
    @dataclass
    class Both:
        copies: typing.ClassVar[Copies] = Copies({"stage.inner": "inner"}, why="one inner for all; set inner")
        inner: Inner = field(default_factory=Inner)
        stage: Outer = field(default_factory=Outer)

    cfg = load_config(Both, None, ["--inner.steps=7"])
    assert cfg.stage.inner == cfg.inner == Inner(steps=7)
    assert "inner" not in to_dict(cfg, copies=False)["stage"] and to_dict(cfg)["stage"]["inner"]["steps"] == 7
    assert [leaf.key for leaf in leaves(cfg)] == ["inner.steps", "inner.lr", "inner.betas", "inner.name",
                                                  "stage.model", "stage.flag"]
    with pytest.raises(VqgenError, match=r"^command line: --stage\.inner: one inner for all; set inner$"):
        load_config(Both, None, ["--stage.inner.steps=3"])
    path = tmp_path / "both.yaml"
    path.write_text("stage:\n  inner:\n    lr: 0.5\n")
    with pytest.raises(VqgenError, match=rf"^{re.escape(str(path))}: stage\.inner: one inner"):
        load_config(Both, path)
