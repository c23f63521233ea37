"""Unknown config keys are errors, with or without Hydra's `+`/`++`.

Struct mode rejects `train.stepz=5`, but Hydra's hint then says "use +train.stepz=5", and a
`+key=value` (or `++key=value`) is added to the config and silently ignored when the config
becomes dataclasses. `check_keys(cfg, Schema, "trainer")` walks the composed config against the
dataclass schema and raises `UnknownKeyError` (a ValueError, one line) naming the first key the
schema does not have. Fields typed as a mapping (`dict[str, X]`) or `Any` are free-form by
design (remix weights, pipeline stages and options): their keys are not checked, but a mapping
of dataclasses (`dict[str, StageConfig]`) has each value checked against that dataclass.

Hydra's own error for `key=value` on a missing key ("Could not override ... use +key=value")
suggests the `+` that then used to be ignored; `from_hydra_error` turns it into the same
one-line UnknownKeyError, and `compose_checked` composes an app's config as its CLI does and
applies both checks (each app's `precheck` calls it before `@hydra.main` runs).

Imports nothing of the project (see `appconf/__init__.py`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

# Keys Hydra may leave at the top of a composed config; never part of an app's schema.
_HYDRA_KEYS = frozenset({"hydra"})


class UnknownKeyError(ValueError):
    """A config key that the app's schema does not define."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve here: use the raw ones
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _arms(tp: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)


def _shape(tp: Any) -> tuple[str, Any]:
    """('dataclass', cls) | ('map', value type) | ('list', item type) | ('free', None)."""
    for arm in _arms(tp):
        if dataclasses.is_dataclass(arm) and isinstance(arm, type):
            return "dataclass", arm
    for arm in _arms(tp):
        origin = typing.get_origin(arm) or arm
        args = typing.get_args(arm)
        if origin in (dict, typing.Dict) or origin is typing.Mapping:  # noqa: UP006
            return "map", args[1] if len(args) == 2 else Any
        if origin in (list, tuple, typing.List, typing.Tuple):  # noqa: UP006
            return "list", args[0] if args else Any
    return "free", None


def _child(node: Any, key: Any) -> Any:
    """A child node without resolving interpolations (those are not checked)."""
    child = node._get_node(key)
    if child is None or child._is_interpolation() or child._is_missing():
        return None
    return child


def _walk(node: Any, tp: Any, path: str) -> tuple[str, type] | None:
    kind, inner = _shape(tp)
    if kind == "free" or node is None:
        return None
    if kind == "dataclass" and isinstance(node, DictConfig) and not node._is_none():
        fields = _hints(inner)
        for key in node.keys():
            if path == "" and key in _HYDRA_KEYS:
                continue
            where = f"{path}{key}"
            if key not in fields:
                return where, inner
            found = _walk(_child(node, key), fields[key], f"{where}.")
            if found:
                return found
    elif kind == "map" and isinstance(node, DictConfig) and not node._is_none():
        for key in node.keys():
            found = _walk(_child(node, key), inner, f"{path}{key}.")
            if found:
                return found
    elif kind == "list" and isinstance(node, ListConfig) and not node._is_none():
        for i in range(len(node)):
            found = _walk(_child(node, i), inner, f"{path}{i}.")
            if found:
                return found
    return None


def unknown_key(cfg: DictConfig, schema: type) -> tuple[str, type] | None:
    """(dotted key, the dataclass that lacks it) for the first key of `cfg` not in `schema`."""
    assert dataclasses.is_dataclass(schema), schema
    return _walk(cfg, schema, "")


def _owner(schema: type, parent: str) -> type | None:
    """The dataclass that holds the keys under dotted `parent` (None: not a dataclass)."""
    tp: Any = schema
    for part in filter(None, parent.split(".")):
        kind, inner = _shape(tp)
        if kind == "dataclass":
            tp = _hints(inner).get(part)
        elif kind in ("map", "list"):
            tp = inner
        else:
            return None
    kind, inner = _shape(tp)
    return inner if kind == "dataclass" else None


def _error(key: str, schema: type, app: str) -> UnknownKeyError:
    parent, _, leaf = key.rpartition(".")
    owner = _owner(schema, parent)
    close = difflib.get_close_matches(leaf, list(_hints(owner)), n=1) if owner else []
    hint = f"; did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
    return UnknownKeyError(f"unknown config key '{key}' (not in the {app} schema{hint})")


def check_keys(cfg: DictConfig, schema: type, app: str) -> None:
    """Raise UnknownKeyError naming the first key of `cfg` that `schema` does not define."""
    found = unknown_key(cfg, schema)
    if found is not None:
        raise _error(found[0], schema, app)


_COULD_NOT_OVERRIDE = re.compile(r"Could not override '([^']+)'")


def from_hydra_error(err: BaseException, schema: type, app: str) -> UnknownKeyError | None:
    """Hydra's "Could not override 'k'" for a key the schema lacks, as an UnknownKeyError."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    match = _COULD_NOT_OVERRIDE.search(str(err))
    if match and isinstance(err.__cause__, (ConfigKeyError, ConfigAttributeError)):
        return _error(match.group(1), schema, app)
    return None


def compose_checked(
    conf_dir: str | Path, config_name: str, overrides: list[str], schema: type, app: str
) -> DictConfig:
    """Compose `config_name` with `overrides` as the app's CLI does; raise UnknownKeyError for a
    key the schema lacks (with or without `+`). Other composition errors propagate as Hydra
    raised them. Hydra's global state is restored afterwards."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None
    gh.clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except Exception as err:
        unknown = from_hydra_error(err, schema, app)
        if unknown is not None:
            raise unknown from None
        raise
    finally:
        gh.clear()
        if saved is not None:
            gh.initialize(saved)
    check_keys(cfg, schema, app)
    return cfg


__all__ = [
    "UnknownKeyError",
    "check_keys",
    "compose_checked",
    "from_hydra_error",
    "unknown_key",
]
