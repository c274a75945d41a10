"""Typed configs: dataclasses whose fixed-choice fields are Enums, loaded from defaults < YAML < overrides.

Every stage's settings are one dataclass (``PreprocessConfig``, ``RetrievalConfig``,
``RankingConfig``, ``ExportConfig``, ...). A field typed with a :class:`Choice` subclass
takes its text value from YAML or the command line and becomes the Enum member in
``__post_init__`` (:func:`coerce_choices`), which is the one place such values are checked.
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from funnel.core.errors import FunnelError

C = TypeVar("C")


class Choice(str, Enum):
    """A text setting with a fixed set of values (compares equal to its text; JSON writes the text)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> list[str]:
        return [str(m.value) for m in cls]


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every field of a dataclass."""
    return typing.get_type_hints(cls)


def coerce_choices(config: Any) -> None:
    """Turn every :class:`Choice` field of a dataclass instance from text into its member.

    An unknown value is a :class:`FunnelError` naming the config, the field and the choices.
    """
    types = field_types(type(config))
    for f in dataclasses.fields(config):
        kind = types[f.name]
        if isinstance(kind, type) and issubclass(kind, Choice):
            value = getattr(config, f.name)
            try:
                setattr(config, f.name, kind(value))
            except ValueError:
                raise FunnelError(f"{type(config).__name__}: {f.name} must be one of {', '.join(kind.values())} "
                                  f"(got {value!r})") from None


def as_dict(config: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` with Choice members as their text (for manifests and YAML)."""
    return {k: (str(v) if isinstance(v, Choice) else v) for k, v in dataclasses.asdict(config).items()}


def load_config(cls: type[C], yaml_path: str | None, overrides: dict[str, Any]) -> C:
    """Defaults < YAML file < overrides (None values mean 'not given'); validated on construction."""
    values: dict[str, Any] = {}
    if yaml_path:
        path = Path(yaml_path)
        if not path.exists():
            raise FunnelError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise FunnelError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise FunnelError(f"{path}: expected a mapping of field: value")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise FunnelError(f"{path}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**values)
    except TypeError as exc:
        raise FunnelError(f"{cls.__name__}: {exc}") from None
