"""Run a TensorFlow SavedModel's serving signature on numpy columns (no merlin-models import)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class SavedModelRunner:
    """``serving_default`` of a SavedModel, called with a dict of 1-D numpy columns.

    merlin-models towers and the DLRM export plain signatures (one ``[-1]`` or ``[-1, 1]``
    tensor per feature); inputs are cast and shaped to the signature, the single output is
    returned as a float32 array with one row per input row.
    """

    def __init__(self, path: str | os.PathLike[str]):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        self.path = str(path)
        self._tf = tf
        self._fn = tf.saved_model.load(self.path).signatures["serving_default"]
        specs = self._fn.structured_input_signature[1]
        self.inputs = {name: (spec.dtype.as_numpy_dtype, spec.shape.rank or 1) for name, spec in specs.items()}
        self.output = sorted(self._fn.structured_outputs)[0]

    def __call__(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        missing = sorted(set(self.inputs) - set(columns))
        if missing:
            raise KeyError(f"{self.path}: inputs missing: {', '.join(missing)}")
        feed = {}
        for name, (dtype, rank) in self.inputs.items():
            values = np.asarray(columns[name]).astype(dtype, copy=False)
            feed[name] = self._tf.constant(values.reshape(-1, 1) if rank == 2 else values.reshape(-1))
        out = self._fn(**feed)[self.output].numpy()
        return out.astype(np.float32, copy=False).reshape(len(next(iter(feed.values()))), -1)
