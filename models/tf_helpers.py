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
