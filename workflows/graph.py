"""The NVTabular graph: user, item and context sub-workflows plus the target.

Composition follows NVTabular's own style (``cols >> Op() >> Op()``). Each side is wrapped
in a named ``Subgraph`` so serving can pull out ``workflow.get_subworkflow("user_features")``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import pandas as pd
import nvtabular as nvt
from merlin.dag.ops.subgraph import Subgraph
from merlin.schema import Tags

from workflows import CONTEXT_SUBGRAPH, ITEM_SUBGRAPH, TARGET, TIME, USER_SUBGRAPH
from workflows.history import ITEM_HISTORY, NOT_FEATURES, USER_HISTORY

AGE_BOUNDARIES = [18, 25, 30, 35, 45, 55, 65]
COUNT_LIKE = re.compile(r"(_n_|days|count)")
ID_LIKE = re.compile(r"(_id|_code|_no|zip|postal)$|^(zip|postal)", re.IGNORECASE)


def item_id_columns(schema) -> list[str]:
    """The item schema's categorical columns that name an identity (ids and codes, ``ID_LIKE``): their
    vocabularies are counted over purchases, so an item nobody bought has the out-of-vocabulary code
    in every one of them (``models.tf_helpers.IdDropout``, ``models.ranking_rows.hide_new_ids``)."""
    items = schema.select_by_tag(Tags.ITEM).select_by_tag(Tags.CATEGORICAL)
    return [name for name in items.column_names if ID_LIKE.search(name)]


@dataclass
class FeatureSpec:
    """How each raw column of a feature table becomes a model input."""

    key: str
    categorical: list[str] = field(default_factory=list)
    multi_hot: list[str] = field(default_factory=list)
    continuous: list[str] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)  # continuous, log-transformed
    bucketized: dict[str, list[float]] = field(default_factory=dict)  # numeric -> bucket ids

    @property
    def inputs(self) -> list[str]:
        cols = [self.key, *self.categorical, *self.multi_hot, *self.continuous, *self.counts]
        return list(dict.fromkeys(cols + list(self.bucketized)))


def infer_spec(table: pd.DataFrame, key: str, extra_buckets: dict[str, list[float]] | None = None) -> FeatureSpec:
    """Classify a feature table's columns by dtype and name (ids and codes are categorical)."""
    spec = FeatureSpec(key=key)
    for col in table.columns:
        if col == key or col in NOT_FEATURES:
            continue
        values = table[col]
        sample = values.dropna().head(1)
        if len(sample) and not pd.api.types.is_scalar(sample.iloc[0]):  # lists: multi-hot
            spec.multi_hot.append(col)
        elif pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            spec.categorical.append(col)
        elif ID_LIKE.search(col):
            spec.categorical.append(col)
        elif col.lower() == "age":
            spec.bucketized[col] = AGE_BOUNDARIES
            spec.continuous.append(col)
        elif col in USER_HISTORY or col in ITEM_HISTORY or COUNT_LIKE.search(col):
            spec.counts.append(col)
        else:
            spec.continuous.append(col)
    for col, bounds in (extra_buckets or {}).items():
        if col in table.columns:
            spec.bucketized[col] = bounds
    return spec


def _side(spec: FeatureSpec, id_tagger, feature_tagger, id_threshold: int, feature_threshold: int, categorify,
          vocabs: dict[str, pd.Series]):
    if spec.key in vocabs:  # counted over the interactions (workflows.tables.vocabulary)
        ids = categorify(vocabs={spec.key: vocabs[spec.key]})
    else:
        ids = categorify(freq_threshold=id_threshold)
    out = [spec.key] >> ids >> id_tagger()
    for cols in (spec.categorical, spec.multi_hot):
        if not cols:
            continue
        if all(col in vocabs for col in cols):  # counted over the purchases (weighted_vocabulary)
            features = categorify(vocabs={col: vocabs[col] for col in cols})
        else:
            features = categorify(freq_threshold=feature_threshold)
        out += cols >> features >> feature_tagger()
    for col, bounds in spec.bucketized.items():
        bucket = (
            [col]
            >> nvt.ops.FillMissing(fill_val=-1)
            >> nvt.ops.Bucketize({col: bounds})
            >> nvt.ops.Rename(postfix="_bucket")
            >> categorify()
        )
        out += bucket >> feature_tagger()
    if spec.counts:
        counts = spec.counts >> nvt.ops.FillMissing(fill_val=0) >> nvt.ops.Clip(min_value=0) >> nvt.ops.LogOp()
        out += counts >> nvt.ops.Normalize() >> nvt.ops.AddTags([Tags.CONTINUOUS]) >> feature_tagger()
    if spec.continuous:
        conts = spec.continuous >> nvt.ops.FillMissing() >> nvt.ops.Normalize()
        out += conts >> nvt.ops.AddTags([Tags.CONTINUOUS]) >> feature_tagger()
    return out


def build_workflow(
    user_spec: FeatureSpec,
    item_spec: FeatureSpec,
    context: list[str],
    id_threshold: int = 1,
    feature_threshold: int = 3,
    vocab_dir: str | None = None,
    vocabs: dict[str, pd.Series] | None = None,
):
    """The full (unfitted) workflow: user + item + context sub-workflows and the target.

    ``vocab_dir``: where fitting writes the category vocabularies (``Workflow.save`` copies them
    into the saved workflow); NVTabular's default is ``./categories`` in the working directory.
    ``vocabs``: fixed vocabularies (most frequent first) for the id, context and categorical
    feature columns, which are then not fitted; the others are fitted as usual.
    """
    vocabs = vocabs or {}
    categorify = functools.partial(nvt.ops.Categorify, dtype="int32", out_path=vocab_dir)
    user = _side(user_spec, nvt.ops.TagAsUserID, nvt.ops.TagAsUserFeatures, id_threshold, feature_threshold,
                 categorify, vocabs)
    item = _side(item_spec, nvt.ops.TagAsItemID, nvt.ops.TagAsItemFeatures, id_threshold, feature_threshold,
                 categorify, vocabs)
    outputs = Subgraph(USER_SUBGRAPH, user) + Subgraph(ITEM_SUBGRAPH, item)
    if context:
        given = {col: vocabs[col] for col in context if col in vocabs}
        ctx_categorify = categorify(vocabs=given) if len(given) == len(context) else categorify()
        ctx = context >> ctx_categorify >> nvt.ops.AddTags([Tags.CONTEXT, Tags.CATEGORICAL])
        outputs += Subgraph(CONTEXT_SUBGRAPH, ctx)
    target = [TARGET] >> nvt.ops.AddMetadata(tags=[Tags.BINARY_CLASSIFICATION, Tags.TARGET])
    time = [TIME] >> nvt.ops.AddMetadata(tags=[Tags.TIME])
    return nvt.Workflow(outputs + target + time)
