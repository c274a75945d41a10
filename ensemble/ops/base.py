"""What every funnel serving operator shares: artifact copying, pickling without data, schemas."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from merlin.dag import BaseOperator, ColumnSelector, DataFormats, Supports
from merlin.schema import ColumnSchema, Schema

# columns of a request once the runtime has broadcast the request-level inputs to every user
USER_ID, K, EXCLUDE, TEMPERATURE, SEED = "user_id", "k", "exclude_items", "temperature", "seed"
REQUEST_COLUMNS = [USER_ID, K, EXCLUDE, TEMPERATURE, SEED]
USER_ROW = "user_row"  # position in the export's user table, -1 for unknown users
USER_PREFIX = "user__"  # encoded user features travel as user__<feature>
CANDIDATES, SOURCES, RETRIEVAL_SCORES, CANDIDATE_SCORES, TIERS = (
    "candidate_rows", "candidate_sources", "retrieval_scores", "candidate_scores", "candidate_tiers")
ITEM_ITEM_SCORES = "item_item_scores"  # EASE score of every candidate from the user's own items
# the tier of a new item given one of the list's last places (new_item_slots): drawn before every other tier,
# shown after them (ensemble.ops.order.reserved_last)
RESERVED_TIER = -1


class ServingOperator(BaseOperator):
    """Base of the serving operators.

    Subclasses list their artifact files in ``files`` (relative names), build their new
    columns in ``compute`` and describe them in ``new_columns``. State loaded from artifacts
    lives in attributes starting with ``_``; those are never pickled with the graph, so the
    saved ensemble holds configuration only and the data travels as parquet/npz/SavedModel.
    """

    files: tuple[str, ...] = ()
    passthrough = True

    def __init__(self, source_dir: str | Path):
        super().__init__()
        self.source_dir = str(source_dir)

    # -- artifacts ------------------------------------------------------------------------
    def save_artifacts(self, artifact_path: str | None = None) -> None:
        if not artifact_path:
            return
        for name in self.files:
            src, dst = Path(self.source_dir) / name, Path(artifact_path) / name
            if dst.exists() or src.resolve() == dst.resolve():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)

    def load_artifacts(self, artifact_path: str | None = None) -> None:
        path = Path(artifact_path or self.source_dir)
        missing = [name for name in self.files if not (path / name).exists()]
        if missing:
            raise FileNotFoundError(f"{path}: {type(self).__name__} artifacts missing: {', '.join(missing)}")
        self.load(path)

    def load(self, path: Path) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    # -- schema and transform ---------------------------------------------------------------
    def new_columns(self, input_schema: Schema) -> list[ColumnSchema]:  # pragma: no cover
        raise NotImplementedError

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema | None = None) -> Schema:
        new = Schema(self.new_columns(input_schema))
        if not self.passthrough:
            return new
        return input_schema.excluding_by_name(new.column_names) + new

    def compute(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def transform(self, col_selector: ColumnSelector, transformable):
        kept = {name: transformable[name] for name in transformable.columns}  # TensorColumns
        new = self.compute({name: col.values for name, col in kept.items()})
        # passed-through columns travel as the TensorColumns they are (not wrapped again: ~1 ms a call)
        return type(transformable)({**kept, **new} if self.passthrough else new)

    @property
    def supports(self) -> Supports:
        return Supports.CPU_DICT_ARRAY | Supports.GPU_DICT_ARRAY

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE


def column(name: str, dtype: Any, width: bool = False) -> ColumnSchema:
    """Schema of a per-user column, ``(users,)`` or ``(users, width)``."""
    return ColumnSchema(name, dtype=dtype, dims=(None, None) if width else (None,))


def user_features(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The encoded user features in a batch, with their model-side names."""
    return {name[len(USER_PREFIX):]: values for name, values in columns.items() if name.startswith(USER_PREFIX)}
