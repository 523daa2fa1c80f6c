"""Run settings: dataclasses whose defaults work, overridden by a YAML file, then by flags.

    cfg = load_config(PipelineConfig, "configs/fashion-mnist.yaml", ["--prior.train.steps=500"])

Unknown keys and values of the wrong type raise `VqgenError` naming the file and the key, so a
typo never passes silently (a plain transformers config would keep it as an attribute). Sections
typed `dict` (a model's architecture) are passed through as they are; the model's own config
class checks them against its signature with `check_kwargs`.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vqgen.errors import VqgenError

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of `cls`, then the YAML file at `path`, then `--a.b=value` overrides."""
    cfg = cls()
    if path is not None:
        cfg = apply(cfg, read_yaml(path), source=str(path))
    if overrides:
        cfg = apply(cfg, parse_overrides(overrides), source="command line")
    return cfg


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise VqgenError(f"{path}: config file not found; pass an existing YAML file (see configs/)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise VqgenError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the syntax") from None
    if not isinstance(data, dict):
        raise VqgenError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def parse_overrides(args: list[str]) -> dict:
    """`["--prior.train.steps=500", "--data.spec=mnist"]` -> nested dict, values parsed as YAML."""
    out: dict = {}
    for arg in args:
        key, sep, raw = arg.removeprefix("--").partition("=")
        if not sep or not key:
            raise VqgenError(f"command line: '{arg}' is not a setting; write --section.key=value")
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        *parents, leaf = key.replace("-", "_").split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def apply(cfg: T, values: dict, source: str, prefix: str = "") -> T:
    """A copy of dataclass `cfg` with `values` applied, checking every key and type."""
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
            changes[key] = coerce(value, hints[key], name, source)
    return dataclasses.replace(cfg, **changes)


def coerce(value: Any, hint: Any, name: str, source: str) -> Any:
    """Check `value` against the type hint `hint`, converting where it is lossless (int -> float)."""
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


def to_dict(cfg: Any) -> dict:
    """A plain, YAML-ready dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
