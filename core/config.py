"""Run settings: dataclasses whose defaults work, overridden by a YAML file, then by flags.

    cfg = load_config(PipelineConfig, "configs/fashion-mnist.yaml", ["--prior.train.steps=500"])

`load_config` is the one function that merges them, for every command and the pipeline; `leaves`
lists a config's settings for the command line's help.

Each field is declared with `setting(default, help, ge=..., choices=...)`: its help text and the
values it takes live beside it, so one declaration feeds the checks here and the command line's
help. Unknown keys, values of the wrong type and values out of range raise `VqgenError` naming the
source (the YAML file, or the command line), the dotted key and the fix, so a typo never passes
silently (a plain transformers config would keep it as an attribute). Sections typed `dict` (a
model's architecture) are passed through as they are; the model's own config class checks them
against its signature with `check_kwargs`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml

from core.errors import VqgenError

T = TypeVar("T")

COMMAND_LINE = "command line"
# YAML 1.1 (PyYAML) reads `1e-3` and `1.0e3` as strings: a float field accepts these spellings.
_FLOAT_TEXT = re.compile(r"[-+]?((\d+\.?\d*|\.\d+)(e[-+]?\d+)?|inf|infinity|nan)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Rule:
    """The values a setting takes beside its type. A number must lie in the range (ge/gt/le/lt) or
    be one of `choices` (e.g. 0 for "0: all"); a float must be finite; a list or tuple has
    `length` items (or at least `min_length`) and its rule applies to each item."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple = ()
    length: int | None = None
    min_length: int = 0

    def describe(self, many: bool = False) -> str:
        """The rule in words, e.g. '>= 1', 'in (0, 1)', '0 or >= 2', 'one of no, fp16, bf16', or for a
        list or tuple (`many`, implied by a length) '2 values, each in [0, 1)'."""
        item = " or ".join(filter(None, (", ".join(map(str, self.choices)), self._range())))
        if self.choices and not self._range():
            item = f"one of {item}" if len(self.choices) > 1 else item
        count = (f"{self.length} values" if self.length is not None
                 else f"at least {self.min_length} value(s)" if self.min_length else "values" if many else "")
        return ", each ".join(filter(None, (count, item)))

    def problem(self, value: Any) -> str | None:
        """Why `value` breaks the rule ('must be >= 1'), or None when it keeps it."""
        if isinstance(value, list | tuple):
            too_few = len(value) < self.min_length or self.length not in (None, len(value))
            bad = too_few or any(self._item_problem(v) for v in value)
            return f"must be {self.describe(many=True)}" if bad else None
        return self._item_problem(value)

    def _item_problem(self, value: Any) -> str | None:
        if value is None or isinstance(value, bool | dict):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number" + (f" {self.describe()}" if self.describe() else "")
        if value in self.choices or (not self.choices and not self._range()):
            return None
        if self._range() and isinstance(value, int | float) and self._in_range(value):
            return None
        return f"must be {self.describe()}"

    def _in_range(self, x: float) -> bool:
        return all((self.ge is None or x >= self.ge, self.gt is None or x > self.gt,
                    self.le is None or x <= self.le, self.lt is None or x < self.lt))

    def _range(self) -> str:
        low = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None
        high = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        if high:
            return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return ""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            **rule: Any) -> Any:
    """A dataclass field with its help text and `Rule` (ge, gt, le, lt, choices, length, min_length):
    `batch_size: int = setting(64, "global batch", ge=1)`. Lists and dicts are copied per instance."""
    metadata = {"help": help, "rule": Rule(**rule)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def rule_of(f: dataclasses.Field) -> Rule:
    return f.metadata.get("rule", Rule())


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


class Layer(NamedTuple):
    """One source of settings: its values, where they come from, and the prefix its keys are named
    with in errors ('tokenizer.' for a pipeline YAML's section, '--' on the command line)."""

    values: dict
    source: str
    prefix: str = ""


@dataclasses.dataclass(frozen=True)
class Copies:
    """Settings of a config that copy another of its settings, declared as the config class's
    `copies` ClassVar (a pipeline's stages read its one top-level `data:`). `load_config` refuses a
    value given for one, naming `why`, and fills it in; `leaves` (the command line's help) skips it."""

    of: dict[str, str]  # dotted key -> the dotted key it copies
    why: str


class Leaf(NamedTuple):
    """One setting of a config: its dotted key, its value, its type hint and its field."""

    key: str
    value: Any
    hint: Any
    field: dataclasses.Field


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (), *,
                section: str | None = None, pipeline_keys: Iterable[str] = (), flags: dict[str, Any] | None = None,
                base: T | None = None) -> T:
    """The one merge of settings: defaults of `cls` (or `base`), then the YAML file at `path`, then
    named `flags` ({"data.spec": ...}, None for unset), then `--a.b=value` overrides; every value
    checked. Given `pipeline_keys`, a YAML whose top-level keys are all among them is a pipeline
    YAML: `cls` reads its dotted `section` of it (see `_file_layers`). Fills `cls.copies`."""
    cfg = cls() if base is None else base
    copies = _copies(cls)
    for layer in _layers(cls, path, overrides, section, set(pipeline_keys), flags or {}):
        _refuse_copies(layer, copies)
        cfg = apply(cfg, *layer)
    for key, source in copies.of.items():
        cfg = apply(cfg, _nest([(key, to_dict(_get(cfg, source)))]), source=f"{cls.__name__}.copies")
    return cfg


def _layers(cls: type, path: str | Path | None, overrides: Iterable[str], section: str | None,
            pipeline_keys: set[str], flags: dict[str, Any]) -> list[Layer]:
    """The sources of settings in the order they apply: the file first, the command line last, so
    that an error names the source that holds the bad key."""
    layers = [] if path is None else _file_layers(cls, path, section, pipeline_keys)
    given = {key: value for key, value in flags.items() if value is not None}
    if given:
        layers.append(Layer(_nest(given.items()), COMMAND_LINE, "--"))
    overrides = list(overrides)
    if overrides:
        layers.append(Layer(parse_overrides(overrides), COMMAND_LINE, "--"))
    return layers


def _file_layers(cls: type, path: str | Path, section: str | None, pipeline_keys: set[str]) -> list[Layer]:
    """A pipeline YAML (its top-level keys all among `pipeline_keys`) gives the dotted `section`
    (e.g. 'eval.classifier'; None or absent: no settings) and its `data:` when `cls` has data
    settings. Any other YAML is `cls`'s settings alone, so that a misspelt key in it is reported."""
    raw = _read_yaml(path)
    if not pipeline_keys or not raw or not set(raw) <= pipeline_keys:
        return [Layer(raw, str(path))]
    layers = []
    if section is not None:
        node: Any = raw
        for key in section.split("."):
            node = node.get(key, {}) if isinstance(node, dict) else node
        if not isinstance(node, dict):
            raise VqgenError(f"{path}: '{section}' is a section; give it a mapping of settings")
        if "data" in node:  # the pipeline refuses it; here the top-level data: would silently win over it
            raise VqgenError(f"{path}: {section}.data: a pipeline YAML gives every stage its top-level data: section; "
                             "move these settings there")
        layers.append(Layer(node, str(path), f"{section}."))
    if "data" in raw and "data" in {f.name for f in dataclasses.fields(cls)}:
        layers.append(Layer({"data": raw["data"]}, str(path)))
    return layers


def _copies(cls: type) -> Copies:
    return getattr(cls, "copies", Copies({}, ""))


def _refuse_copies(layer: Layer, copies: Copies) -> None:
    for key in copies.of:
        node, leaf = _parent(layer.values, key)
        if leaf in node:
            raise VqgenError(f"{layer.source}: {layer.prefix}{key}: {copies.why}")


def _parent(values: dict, key: str) -> tuple[dict, str]:
    """The mapping in nested `values` that holds dotted `key` ({} when there is none), and its last part."""
    *parents, leaf = key.split(".")
    for part in parents:
        values = values.get(part, {})
        if not isinstance(values, dict):
            return {}, leaf
    return values, leaf


def _get(cfg: Any, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), cfg)


def leaves(cfg: Any) -> Iterator[Leaf]:
    """Every setting of the config `cfg` with its current value, sections flattened into dotted
    keys ('train.steps'), in declaration order; the `copies` of its class are left out."""
    skip = set(_copies(type(cfg)).of)

    def walk(node: Any, prefix: str) -> Iterator[Leaf]:
        hints = typing.get_type_hints(type(node))
        for f in dataclasses.fields(node):
            key, value = prefix + f.name, getattr(node, f.name)
            if key in skip:
                continue
            if dataclasses.is_dataclass(value):
                yield from walk(value, f"{key}.")
            else:
                yield Leaf(key, value, hints[f.name], f)

    return walk(cfg, "")


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise VqgenError(f"{path}: config file not found; pass an existing YAML file (see configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise VqgenError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the syntax") from None
    except UnicodeDecodeError as err:  # a binary file given as --config (a checkpoint, an image...)
        raise VqgenError(f"{path}: not a YAML text file ({err.reason} at byte {err.start}); pass a YAML file "
                         "(see configs/)") from None
    except OSError as err:
        raise VqgenError(f"{path}: cannot read it ({err.strerror}); pass a readable YAML file") from None
    if not isinstance(data, dict):
        raise VqgenError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def parse_overrides(args: list[str]) -> dict:
    """`["--prior.train.steps=500", "--data.spec=mnist"]` -> nested dict, values parsed as YAML."""
    pairs = []
    for arg in args:
        key, sep, raw = arg.removeprefix("--").partition("=")
        if not sep or not key:
            raise VqgenError(f"{COMMAND_LINE}: '{arg}' is not a setting; write --section.key=value")
        pairs.append((key.replace("-", "_"), yaml.safe_load(raw) if raw != "" else ""))
    return _nest(pairs)


def _nest(pairs: Iterable[tuple[str, Any]]) -> dict:
    """[("a.b", 1), ("a.c", 2)] -> {"a": {"b": 1, "c": 2}}."""
    out: dict = {}
    for key, value in pairs:
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def apply(cfg: T, values: dict, source: str, prefix: str = "") -> T:
    """A copy of dataclass `cfg` with `values` applied, checking every key, type and range."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for key, value in values.items():
        name = prefix + key
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise VqgenError(f"{source}: unknown setting '{name}'; known keys here: {known}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise VqgenError(f"{source}: '{name}' is a section; give it a mapping of settings")
            changes[key] = apply(current, value, source, prefix=f"{name}.")
        else:
            value = check_value(coerce(value, hints[key], name, source), fields[key], name, source)
            # A mapping given again (a YAML `model:` section, then --model.key=value) is updated key
            # by key, as a section is, rather than replaced.
            changes[key] = _merged(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
    return dataclasses.replace(cfg, **changes)


def _merged(old: dict, new: dict) -> dict:
    """`new` over `old`, nested mappings merged key by key."""
    return old | {key: _merged(old[key], value) if isinstance(old.get(key), dict) and isinstance(value, dict) else value
                  for key, value in new.items()}


def check(cfg: T, prefix: str = "", source: str = "") -> T:
    """`cfg` itself when every setting in it (sections included) keeps its rule: for configs built
    in Python, which `apply` never saw."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check(value, f"{prefix}{f.name}.", source)
        else:
            check_value(value, f, prefix + f.name, source)
    return cfg


def check_value(value: Any, f: dataclasses.Field, name: str, source: str) -> Any:
    """`value` when it keeps the rule of field `f`, else one line naming the key and the rule."""
    problem = rule_of(f).problem(value)
    if problem is None:
        return value
    helps = f" ({help_of(f)})" if help_of(f) else ""
    where = f"{source}: " if source else ""
    raise VqgenError(f"{where}{name} {problem}, got {value!r}{helps}; fix the value")


def coerce(value: Any, hint: Any, name: str, source: str) -> Any:
    """Check `value` against the type hint `hint`, converting where it is lossless (int -> float,
    and a float written as text, which YAML 1.1 makes of `1e-3`)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, name, source)
            except VqgenError:
                continue
        raise _type_error(value, hint, name, source)
    if hint is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _type_error(value, hint, name, source)
        inner = args[0] if args else Any
        items = [coerce(v, inner, name, source) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise _type_error(value, hint, name, source)
        return dict(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise _type_error(value, hint, name, source)


def _type_error(value: Any, hint: Any, name: str, source: str) -> VqgenError:
    want = getattr(hint, "__name__", str(hint))
    return VqgenError(f"{source}: '{name}' must be {want}, got {value!r}; fix the value")


def check_kwargs(cls: type, kwargs: dict, source: str) -> dict:
    """Check a YAML `model:` section against `cls.__init__`'s signature before building it."""
    params = inspect.signature(cls.__init__).parameters
    allowed = {p for p in params if p not in ("self", "kwargs")}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise VqgenError(
            f"{source}: unknown {cls.__name__} setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(allowed))}"
        )
    return kwargs


def to_dict(cfg: Any, *, copies: bool = True) -> dict:
    """A plain, YAML-ready dict of a config dataclass; without its class's `copies` when `copies` is
    False (what a user would write, so that it loads again)."""
    values = dataclasses.asdict(cfg)
    if not copies:
        for key in _copies(type(cfg)).of:
            node, leaf = _parent(values, key)
            del node[leaf]
    return values

