"""Run a TensorFlow SavedModel's serving signature on numpy columns (no merlin-models import)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf


class SavedModelRunner:
    """``serving_default`` of a SavedModel, called with a dict of 1-D numpy columns.

    merlin-models towers and the DLRM export plain signatures (one ``[-1]`` or ``[-1, 1]``
    tensor per feature); inputs are cast and shaped to the signature, the single output is
    returned as a float32 array with one row per input row.
    """

    def __init__(self, path: str | os.PathLike[str]):
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


NUMPY_TO_TRITON = {"int32": "TYPE_INT32", "int64": "TYPE_INT64", "float32": "TYPE_FP32", "float64": "TYPE_FP64"}


def signature_spec(path: str | os.PathLike[str]) -> dict:
    """Input names, dtypes and ranks and the output name of a SavedModel's serving signature."""
    runner = SavedModelRunner(path)
    return {"inputs": {name: [np.dtype(dtype).name, rank] for name, (dtype, rank) in runner.inputs.items()},
            "output": runner.output}


class TritonModelRunner:
    """The same call as :class:`SavedModelRunner`, answered by another model of the Triton server (BLS).

    Used when the export puts the TensorFlow models into their own Triton models (``--tf-runtime
    tensorflow``: Triton's TensorFlow backend on GPU hosts, or ``python-bls``: python-backend models,
    which is how the BLS path is tested on hosts without that backend).
    """

    def __init__(self, model_name: str, spec: dict):
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        self.model_name, self.output = model_name, spec["output"]
        self.inputs = {name: (np.dtype(dtype), rank) for name, (dtype, rank) in spec["inputs"].items()}

    def __call__(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        pb = self._pb
        tensors = []
        for name, (dtype, rank) in self.inputs.items():
            values = np.asarray(columns[name]).astype(dtype, copy=False)
            tensors.append(pb.Tensor(name, values.reshape(-1, 1) if rank == 2 else values.reshape(-1)))
        response = pb.InferenceRequest(model_name=self.model_name, requested_output_names=[self.output],
                                       inputs=tensors).exec()
        if response.has_error():
            raise RuntimeError(f"{self.model_name}: {response.error().message()}")
        out = pb.get_output_tensor_by_name(response, self.output).as_numpy()
        return out.astype(np.float32, copy=False).reshape(len(tensors[0].as_numpy()), -1)


def model_runner(path, triton_model: str | None, spec: dict | None):
    """A BLS runner inside Triton when the export split the models out, else the SavedModel in-process."""
    if triton_model:
        try:
            import triton_python_backend_utils  # noqa: F401  (only inside a Triton python backend)
        except ImportError:
            return SavedModelRunner(path)
        return TritonModelRunner(triton_model, spec)
    return SavedModelRunner(path)
