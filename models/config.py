"""Dataclass configs: defaults, one YAML file per run, and command-line overrides for every field."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, TypeVar

from funnel.errors import FunnelError

C = TypeVar("C")


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[f.name]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add ``--field-name`` for every field of the dataclass ``cls`` (default None = not given)."""
    group = parser.add_argument_group(f"{cls.__name__} fields (override --config)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _field_type(cls, f)
        flag = "--" + f.name.replace("_", "-")
        origin = typing.get_origin(kind)
        help_text = f.metadata.get("help", "") + f" (default: {f.default if f.default is not dataclasses.MISSING else f.default_factory()})"
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif origin is list:
            (inner,) = typing.get_args(kind)
            group.add_argument(flag, type=inner, nargs="+", default=None, help=help_text)
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind) if origin else kind
            group.add_argument(flag, type=base, default=None, help=help_text)


def load_config(cls: type[C], yaml_path: str | None, overrides: dict[str, Any]) -> C:
    """Defaults < YAML file < command-line overrides (None values mean 'not given')."""
    values: dict[str, Any] = {}
    if yaml_path:
        import yaml

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


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies


def _check_precision(policy: str) -> None:
    if policy not in PRECISIONS:
        raise FunnelError(f"precision: {policy!r} is not one of {', '.join(PRECISIONS)}")


@dataclass
class RetrievalConfig:
    """Two-tower training settings (defaults tuned on the synthetic default and MovieLens-100k)."""

    pre: str = field(default="", metadata={"help": "preprocessing output directory"})
    out: str = field(default="", metadata={"help": "run directory to write"})
    embedding_dim: int = field(default=64, metadata={"help": "output embedding size of both towers"})
    tower_dims: list[int] = field(default_factory=lambda: [128], metadata={"help": "hidden MLP widths per tower"})
    batch_size: int = 1024
    learning_rate: float = 3e-3
    epochs: int = 20
    patience: int = field(default=3, metadata={"help": "epochs without validation gain before stopping"})
    logq: bool = field(default=True, metadata={"help": "popularity (logQ) correction of in-batch negatives"})
    logq_reg: float = 1.0
    temperature: float = 1.0
    valid_days: int = field(default=7, metadata={"help": "time splits: last days of train held out for validation"})
    valid_k: int = 10
    valid_users: int = field(default=2000, metadata={"help": "users sampled for validation recall"})
    seed: int = 0
    threads: int = field(default=0, metadata={"help": "TensorFlow threads (0 = one per core)"})
    devices: str = field(default="auto", metadata={"help": "auto (every visible GPU, mirrored when several), one, "
                                                       "or a list such as /gpu:0,/gpu:1; batch_size is per device"})
    precision: str = field(default="float32", metadata={"help": "float32, mixed_float16 (GPUs) or mixed_bfloat16"})

    def validate(self) -> None:
        if not self.pre or not self.out:
            raise FunnelError("retrieval: need a preprocessing directory and --out")
        if self.epochs < 1 or self.batch_size < 2 or self.embedding_dim < 1 or self.learning_rate <= 0:
            raise FunnelError("retrieval: epochs >= 1, batch_size >= 2, embedding_dim >= 1, learning_rate > 0")
        _check_precision(self.precision)


@dataclass
class RankingConfig:
    """DLRM ranker settings: labelled candidates from the retriever's unseen period."""

    pre: str = field(default="", metadata={"help": "preprocessing output directory"})
    run: str = field(default="", metadata={"help": "run directory holding the retriever"})
    candidates: int = field(default=100, metadata={"help": "retriever top-N per user"})
    hard_negatives: int = field(default=8, metadata={"help": "hard negatives (unbought candidates) per positive"})
    random_negatives: int = field(default=2, metadata={"help": "popularity-sampled negatives per positive"})
    max_users: int = field(default=50_000, metadata={"help": "label-period users sampled for training"})
    embedding_dim: int = 32
    top_dims: list[int] = field(default_factory=lambda: [128, 64])
    batch_size: int = 1024
    learning_rate: float = 1e-3
    epochs: int = 3
    valid_share: float = field(default=0.1, metadata={"help": "share of label users held out for AUC and recall"})
    valid_k: int = field(default=12, metadata={"help": "k of the held-out recall that picks the epoch"})
    seed: int = 0
    threads: int = 0
    devices: str = field(default="auto", metadata={"help": "auto (every visible GPU, mirrored when several), one, "
                                                       "or a list such as /gpu:0,/gpu:1; batch_size is per device"})
    precision: str = field(default="float32", metadata={"help": "float32, mixed_float16 (GPUs) or mixed_bfloat16"})

    def validate(self) -> None:
        if not self.pre or not self.run:
            raise FunnelError("ranking: need a preprocessing directory and --run")
        if self.candidates < 1 or self.epochs < 1 or self.hard_negatives < 0 or self.random_negatives < 0:
            raise FunnelError("ranking: candidates >= 1, epochs >= 1, negatives >= 0")
        if not 0 < self.valid_share < 1:
            raise FunnelError("ranking: valid_share must be in (0, 1)")
        _check_precision(self.precision)
