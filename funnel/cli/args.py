"""Argument helpers shared by the command groups: flags generated from config dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

from funnel.core.config import Choice, field_types, load_config

C = TypeVar("C")


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                         title: str | None = None) -> None:
    """Add ``--field-name`` for every field of the dataclass ``cls`` (default None = not given).

    Booleans get ``--x/--no-x``, lists take several values, :class:`Choice` fields list their
    choices; the help text comes from the field's ``metadata["help"]`` and its default.
    """
    group = parser.add_argument_group(title or f"{cls.__name__} fields")
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = types[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = _default(f)
        help_text = f.metadata.get("help", "") + f" (default: {default})"
        origin = typing.get_origin(kind)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif origin is list:
            (inner,) = typing.get_args(kind)
            group.add_argument(flag, type=inner, nargs="+", default=None, help=help_text)
        elif isinstance(kind, type) and issubclass(kind, Choice):
            group.add_argument(flag, choices=kind.values(), default=None, help=help_text)
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind) if origin else kind
            group.add_argument(flag, type=base, default=None, help=help_text)


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values of ``cls``'s fields given on the command line (None = not given)."""
    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}


def config_from_args(cls: type[C], args: argparse.Namespace, **fixed: Any) -> C:
    """Defaults < ``--config`` YAML (when the command has one) < flags < ``fixed`` (positional arguments)."""
    overrides = overrides_from_args(args, cls)
    overrides.update(fixed)
    return load_config(cls, getattr(args, "config", None), overrides)
