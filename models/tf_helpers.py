"""TensorFlow helpers shared by both trainers and by evaluation: set-up, precision, towers, encoding."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import merlin.models.tf as mm  # registers merlin's Keras layers (load_tower needs them)
import numpy as np
import pandas as pd
import tensorflow as tf
from merlin.io import Dataset

from funnel.core.errors import FunnelError
from models import list_columns

list_columns.install()  # the merlin Loader flattens list features (genres) without a Python loop per value


def configure_tensorflow(seed: int, threads: int = 0) -> str:
    """Seed everything, size thread pools for this host, and return the device in use ('gpu'/'cpu')."""
    n = threads or os.cpu_count() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, n)))
    except RuntimeError:  # already initialised in this process
        pass
    tf.keras.utils.set_random_seed(seed)
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


@contextlib.contextmanager
def precision(policy: str) -> Iterator[None]:
    """Build models under a Keras dtype policy (``mixed_float16`` on GPUs, ``mixed_bfloat16`` on
    CPUs with bf16 units); the previous global policy is restored on exit."""
    before = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(str(policy))
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(before)


@tf.keras.utils.register_keras_serializable(package="funnel")
class IdDropout(tf.keras.layers.Layer):
    """In training, a random share of the rows see every column of ``columns`` (an item's id and
    codes, ``workflows.graph.item_id_columns``) as the out-of-vocabulary code, so the tower behind
    it learns to place an item from its other features: all it has for an item nobody bought
    before the cutoff. A no-op at inference, so a saved tower serves exactly as before. Use as an
    ``mm.Encoder(..., pre=IdDropout(...))``."""

    def __init__(self, columns: list[str], rate: float, oov_index: int, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise FunnelError(f"id dropout rate must be in [0, 1), got {rate}")
        if not columns:
            raise FunnelError("id dropout needs at least one column")
        self.columns, self.rate, self.oov_index = list(columns), float(rate), int(oov_index)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        first = inputs[self.columns[0]]
        drop = tf.random.uniform(tf.shape(first)) < self.rate  # one draw per row, shared by the columns
        out = dict(inputs)
        for name in self.columns:
            ids = inputs[name]
            out[name] = tf.where(tf.reshape(drop, tf.shape(ids)), tf.cast(self.oov_index, ids.dtype), ids)
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "columns": self.columns, "rate": self.rate, "oov_index": self.oov_index}


def float32_output():
    """The last layer of a tower under a mixed policy: embeddings and scores leave in float32."""
    return tf.keras.layers.Activation("linear", dtype="float32", name="float32_output")


def load_tower(path: Path):
    """A saved merlin-models tower or model (Keras SavedModel) with merlin's layers registered."""
    if not Path(path).exists():
        raise FunnelError(f"{path}: no saved model (run `funnel train` first)")
    return tf.keras.models.load_model(str(path), compile=False)  # inference only


def encode_rows(encoder, frame: pd.DataFrame, schema, batch_size: int = 4096) -> np.ndarray:
    """Run a tower (or any Keras model) over every row of an encoded feature frame, in order."""
    ds = Dataset(frame[schema.column_names], schema=schema, cpu=True)
    out = [np.asarray(encoder(batch, training=False)) for batch, _ in mm.Loader(ds, batch_size=batch_size, shuffle=False)]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
