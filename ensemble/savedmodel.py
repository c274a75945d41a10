"""Run a TensorFlow SavedModel's serving signature on numpy columns (no merlin-models import)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf


def model_inputs(columns: dict[str, np.ndarray], inputs: dict[str, tuple]) -> tuple[dict[str, np.ndarray], int]:
    """The arrays a signature wants, cast and shaped, and the number of rows.

    A list feature (e.g. genres) arrives as an object array holding one array per row; merlin-models
    signatures take it as ``NAME__values`` (every row's values, concatenated) and ``NAME__offsets``
    (``rows + 1`` cumulative lengths).
    """
    columns = dict(columns)
    plain = [v for n, v in columns.items() if not n.endswith(("__values", "__offsets")) and np.asarray(v).dtype != object]
    rows = len(plain[0]) if plain else len(next(iter(columns.values())))
    for name in {n[: -len("__values")] for n in inputs if n.endswith("__values")}:
        if name in columns and f"{name}__values" not in columns:
            lists = columns.pop(name)
            lengths = np.fromiter((len(v) for v in lists), dtype=np.int64, count=len(lists))
            columns[f"{name}__values"] = np.concatenate(list(lists)) if lengths.sum() else np.zeros(0)
            columns[f"{name}__offsets"] = np.concatenate([[0], np.cumsum(lengths)])
    missing = sorted(set(inputs) - set(columns))
    if missing:
        raise KeyError(f"inputs missing: {', '.join(missing)}")
    feed = {}
    for name, (dtype, rank) in inputs.items():
        values = np.asarray(columns[name]).astype(dtype, copy=False)
        feed[name] = values.reshape(-1, 1) if rank == 2 else values.reshape(-1)
    return feed, rows


class SavedModelRunner:
    """``serving_default`` of a SavedModel, called with a dict of 1-D numpy columns.

    merlin-models towers and the DLRM export plain signatures (one ``[-1]`` or ``[-1, 1]``
    tensor per feature, list features as values + offsets); inputs are cast and shaped to the
    signature (:func:`model_inputs`), the single output is returned as a float32 array with one
    row per input row.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = str(path)
        self._fn = tf.saved_model.load(self.path).signatures["serving_default"]
        specs = self._fn.structured_input_signature[1]
        self.inputs = {name: (spec.dtype.as_numpy_dtype, spec.shape.rank or 1) for name, spec in specs.items()}
        self.output = sorted(self._fn.structured_outputs)[0]
        self._flat = self._flat_order()

    def _flat_order(self) -> list[str] | None:
        """The signature's inputs in the order of its flat placeholders, where the function can be called
        flat: TensorFlow's keyword call binds and checks ~40 named inputs in Python on every call (~0.25 ms
        for the DLRM, a third of a one-user call's model time); the flat call takes the tensors in order.
        None (keyword calls) where this TensorFlow build's function lacks the flat entry point."""
        names = sorted(self.inputs)
        placeholders = [t.name.split(":")[0] for t in self._fn.inputs[: len(names)]]
        ok = callable(getattr(self._fn, "_call_flat", None)) and hasattr(self._fn, "captured_inputs")
        return names if ok and placeholders == names else None

    def __call__(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        try:
            feed, rows = model_inputs(columns, self.inputs)
        except KeyError as exc:
            raise KeyError(f"{self.path}: {exc.args[0]}") from None
        if self._flat is not None:
            out = self._fn._call_flat([tf.constant(feed[name]) for name in self._flat], self._fn.captured_inputs)
        else:
            out = self._fn(**{name: tf.constant(values) for name, values in feed.items()})
        return out[self.output].numpy().astype(np.float32, copy=False).reshape(rows, -1)


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
        feed, rows = model_inputs(columns, self.inputs)
        tensors = [pb.Tensor(name, values) for name, values in feed.items()]
        response = pb.InferenceRequest(model_name=self.model_name, requested_output_names=[self.output],
                                       inputs=tensors).exec()
        if response.has_error():
            raise RuntimeError(f"{self.model_name}: {response.error().message()}")
        out = pb.get_output_tensor_by_name(response, self.output).as_numpy()
        return out.astype(np.float32, copy=False).reshape(rows, -1)


def model_runner(path, triton_model: str | None, spec: dict | None):
    """A BLS runner inside Triton when the export split the models out, else the SavedModel in-process."""
    if triton_model:
        try:
            import triton_python_backend_utils  # noqa: F401  (only inside a Triton python backend)
        except ImportError:
            return SavedModelRunner(path)
        return TritonModelRunner(triton_model, spec)
    return SavedModelRunner(path)
