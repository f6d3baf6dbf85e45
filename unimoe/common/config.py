"""Validated configs: the base every config of the project builds on (the model's, the trainer's, the
data pipeline's, the scorers', the settings from the environment).

Every config is a pydantic model (``ConfigModel``): unknown keys and wrong types are rejected with the
key path (``train.lr: expected a number, got 'fast'``), so a typo in a YAML file fails loudly instead of
silently falling back to a default. Types are strict (no ``"64"`` for an integer, no ``1`` for true); an
integer is accepted for a float (YAML writes ``1e-4`` and ``1`` alike). Every failure is one error type,
``ConfigError``, whose message names the full key path.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from unimoe.common.files import atomic_write_text


class ConfigError(ValueError):
    """A config could not be parsed or failed validation. ``problems`` holds (key path, what is wrong)
    pairs, the path relative to the config that raised; the message names each with its full path."""

    def __init__(self, message: str, problems: list[tuple[tuple, str]] | None = None):
        super().__init__(message)
        self.problems = problems if problems is not None else [((), message)]


_T = TypeVar("_T")
# YAML and JSON have lists, never tuples: a tuple-typed field takes a list too.
TupleOf = Annotated[tuple[_T, ...], BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]

# Pydantic error types -> what the field expected, in words.
_EXPECTED = {"int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
             "float_type": "a number", "float_parsing": "a number", "bool_type": "true/false",
             "bool_parsing": "true/false", "string_type": "a string", "list_type": "a list", "tuple_type": "a list",
             "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
             "none_required": "null"}
_UNKNOWN_KEY = ("extra_forbidden", "unexpected_keyword_argument")


class ConfigModel(BaseModel):
    """A validated config: strict types, unknown keys rejected, every error a ``ConfigError`` whose
    message carries the key path (prefixed with ``section``, the config's name in messages). Checks that
    span fields are ``model_validator(mode="after")`` methods raising ``ConfigError``; the model config
    keeps its explicit ``validate()`` (presets build it piecewise)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    section: ClassVar[str] = ""

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _config_error(type(self), e) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.section or 'config'}: expected a mapping, got {type(data).__name__}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def replace(self, **changes: Any):
        """A copy with ``changes`` (validated, like constructing it anew)."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    def overrides(self) -> dict[str, Any]:
        """Only the fields given explicitly (to the constructor or in the file), JSON-friendly: a nested
        part of a larger config records these, so a changed default of this class is not frozen into it."""
        return self.model_dump(mode="json", include=self.model_fields_set)


def _config_error(cls: type[ConfigModel], err: ValidationError) -> ConfigError:
    """One ``ConfigError`` for all of ``err``'s problems. A nested config raised its own ``ConfigError``
    (pydantic validates it through its ``__init__``): its problems are re-rooted at the field's path."""
    problems: list[tuple[tuple, str]] = []
    unknown: dict[tuple, list[str]] = {}
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not _is_union_tag(p))
        cause = (e.get("ctx") or {}).get("error")
        if e["type"] in _UNKNOWN_KEY:
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
        elif isinstance(cause, ConfigError):
            problems += [(loc + path, msg) for path, msg in cause.problems]
        elif cause is not None:
            problems.append((loc, str(cause)))
        elif e["type"] in _EXPECTED:
            problems.append((loc, f"expected {_EXPECTED[e['type']]}, got {e['input']!r}"))
        else:
            problems.append((loc, e["msg"]))
    for loc, keys in unknown.items():
        valid = sorted(cls.model_fields) if not loc else None
        problems.append((loc, f"unknown key(s) {sorted(keys)}" + (f"; valid keys: {valid}" if valid else "")))
    problems = _merge_union_alternatives(problems)
    return ConfigError("; ".join(f"{_key_path(cls.section, loc) or 'config'}: {msg}" for loc, msg in problems),
                       problems)


def _is_union_tag(part: Any) -> bool:
    """Pydantic names the member of a union it tried (``str``, ``list[str]``) in an error's location;
    it is not a key."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def _merge_union_alternatives(problems: list[tuple[tuple, str]]) -> list[tuple[tuple, str]]:
    """``expected a string, got 5`` and ``expected a list, got 5`` at one key (a ``str | list`` field)
    become ``expected a string or a list, got 5``."""
    out: dict[tuple, str] = {}
    for loc, msg in problems:
        prev = out.get(loc)
        if prev and prev.startswith("expected ") and msg.startswith("expected "):
            what, _, got = msg[len("expected "):].partition(", got ")
            head, _, prev_got = prev.partition(", got ")
            out[loc] = f"{head} or {what}, got {got}" if got == prev_got else f"{prev}; {msg}"
        else:
            out[loc] = f"{prev}; {msg}" if prev else msg
    return list(out.items())


def _key_path(section: str, loc: tuple) -> str:
    path = section
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


class ConfigFile(ConfigModel):
    """File I/O and hashing for a top-level config."""

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        atomic_write_text(path, self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json())

    @classmethod
    def load(cls, path: str | Path):
        path = Path(path)
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}", e.problems) from None

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` merged into a copy of ``base``, nested mappings key by key."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check(ok: bool, message: str, *key: str | int) -> None:
    """Raise a ``ConfigError`` unless ``ok`` (for the checks that span fields). ``key``: the path of the
    field at fault, which prefixes the message (and the config's own path, when it fails in validation)."""
    if not ok:
        raise ConfigError(f"{_key_path('', key)}: {message}" if key else message, [(key, message)])
