"""YAML configs mapped onto nested dataclasses, with dotted command-line overrides: the machinery only
(the schemas are `utils/train/stage1_config.py` and `utils/train/stage2_config.py`).

    cfg = load_config(Stage1Config, "configs/shapes_vqgan.yaml", ["train.max_steps=200", "model.ch_mult=[1,2,2]"])

Every value is typed by its field: ints widen to floats, `1e-3` is a float, bools are strict, lists
parse as YAML. Unknown keys, wrong types, missing required values and impossible combinations raise
`ConfigError`, one line naming the key, where it came from, and the closest valid key.
"""
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import field
from typing import Any, Optional

import yaml

from utils.core.errors import UserError


class ConfigError(UserError):
    pass


def choices(*values, default):
    """A dataclass field that only takes one of `values`."""
    return field(default=default, metadata={"choices": values})


def num(default=dataclasses.MISSING, *, min=None, max=None, above=None, below=None, factory=None):
    """A numeric field (or a list of numbers, each checked) that must lie in a range: `min`/`max` inclusive,
    `above`/`below` exclusive. None passes (for optional fields)."""
    bounds = {"min": min, "max": max, "above": above, "below": below}
    meta = {"range": {k: v for k, v in bounds.items() if v is not None}}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def describe_range(r: dict) -> str:
    lo = ("[", r["min"]) if "min" in r else ("(", r["above"]) if "above" in r else None
    hi = (r["max"], "]") if "max" in r else (r["below"], ")") if "below" in r else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[0]}{hi[1]}"
    if lo:
        return f"at least {lo[1]}" if lo[0] == "[" else f"above {lo[1]}"
    return f"at most {hi[0]}" if hi[1] == "]" else f"below {hi[0]}"


def check_option(name: str, value, **bounds) -> None:
    """A command-line option's range, as for config keys: `check_option("--top-p", 1.5, above=0, max=1)`."""
    if not _in_range(value, bounds):
        raise ConfigError(f"{name} {value} is out of range: must be {describe_range(bounds)}")


def _in_range(v, r: dict) -> bool:
    return v is None or not (("min" in r and v < r["min"]) or ("max" in r and v > r["max"])
                             or ("above" in r and v <= r["above"]) or ("below" in r and v >= r["below"]))


def load_config(cls, path: Optional[str] = None, overrides: typing.Sequence[str] = (),
                base: Optional[dict] = None, base_name: str = "checkpoint"):
    """Defaults of `cls`, then `base` (a plain dict, e.g. from a checkpoint), then the YAML file at
    `path`, then `overrides` ("section.key=value"); checked after each step's values are typed."""
    cfg = cls()
    if base is not None:
        _apply_dict(cfg, base, base_name)
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: '{path}'")
        with open(path) as f:
            try:
                raw = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"'{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"'{path}' must hold a mapping of sections, got {type(raw).__name__}")
        _apply_dict(cfg, raw, path)
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{text}' is not of the form section.key=value")
        _set(cfg, key.strip(), value, f"override '{text}'", raw_text=True)
    _check_fields(cfg, "")
    where = path or (base_name if base is not None else "the default config")
    if overrides:
        where += " with overrides " + " ".join(overrides)
    if hasattr(cfg, "check"):
        cfg.check(where)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


def all_keys(cfg, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out += all_keys(v, f"{prefix}{f.name}.") if dataclasses.is_dataclass(v) else [prefix + f.name]
    return out


def _closest(cfg, key: str) -> str:
    keys = all_keys(cfg)
    leaf = key.rsplit(".", 1)[-1]
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.5) or \
        difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.6)
    if not match:
        return ""
    full = next((k for k in keys if k == match[0] or k.endswith("." + match[0])), match[0])
    return f"; did you mean '{full}'?"


def _apply_dict(cfg, raw: dict, source: str, prefix: str = "") -> None:
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and _is_section(cfg, key):
            _apply_dict(cfg, v, source, key + ".")
        else:
            _set(cfg, key, v, source)


def _is_section(cfg, key: str) -> bool:
    obj = cfg
    for part in key.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            return False
        obj = getattr(obj, part)
    return dataclasses.is_dataclass(obj)


def _set(cfg, key: str, value: Any, source: str, raw_text: bool = False) -> None:
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
        if part not in names:
            raise ConfigError(f"unknown key '{key}' in {source}{_closest(cfg, key)}")
        if i < len(parts) - 1:
            obj = getattr(obj, part)
    f = names[parts[-1]]
    if dataclasses.is_dataclass(getattr(obj, f.name)):
        raise ConfigError(f"'{key}' in {source} is a section, not a value; set its keys, e.g. '{key}.{dataclasses.fields(getattr(obj, f.name))[0].name}=...'")
    hint = typing.get_type_hints(type(obj))[f.name]
    value = _coerce(value, hint, key, source, raw_text)
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        opts = ", ".join(str(c) for c in f.metadata["choices"])
        near = difflib.get_close_matches(str(value), [str(c) for c in f.metadata["choices"]], n=1)
        raise ConfigError(f"{key}={value!r} in {source} is not one of: {opts}"
                          + (f"; did you mean '{near[0]}'?" if near else ""))
    r = f.metadata.get("range")
    if r and not all(_in_range(v, r) for v in (value if isinstance(value, list) else [value])):
        every = "every element " if isinstance(value, list) else ""
        raise ConfigError(f"{key}={value} in {source} is out of range: {every}must be {describe_range(r)}")
    setattr(obj, f.name, value)


def _coerce(value, hint, key: str, source: str, raw_text: bool = False):
    text = value if raw_text else None
    if raw_text:
        try:
            value = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            value = text
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(text if raw_text else value, args[0], key, source, raw_text)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} in {source}: expected a list of {args[0].__name__}s like [1, 2], got {value!r}")
        return [_coerce(v, args[0], key, source) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if raw_text and text is not None:
            return text.strip()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))
    raise ConfigError(f"{key} in {source}: expected {name}, got {value!r}")


def _check_fields(cfg, prefix: str) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            _check_fields(v, f"{prefix}{f.name}.")
        elif f.metadata.get("required") and v in (None, ""):
            raise ConfigError(f"{prefix}{f.name} is required: set it in the config file or as {prefix}{f.name}=...")
