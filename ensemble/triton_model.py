"""Triton python-backend model running the whole funnel graph (``funnel/1/model.py`` imports this)."""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np

from ensemble.experiment import ENV as EXPERIMENT_ENV
from ensemble.experiment import Experiment
from ensemble.prediction_log import PredictionLogger
from ensemble.runtime import Recommender, RequestError

LOG = logging.getLogger("funnel.triton")


def _model_dir(args: dict) -> Path:
    repo = Path(args["model_repository"])
    return repo.parent.parent if repo.suffix == ".py" else repo  # some Triton builds pass model.py


class TritonPythonModel:
    """Loads the export's :class:`ensemble.runtime.Recommender`; one response per request."""

    def initialize(self, args: dict) -> None:
        import faiss

        faiss.omp_set_num_threads(int(os.environ.get("FUNNEL_FAISS_THREADS", "1")))
        path = _model_dir(args) / str(args["model_version"]) / "ensemble"
        self.recommender = Recommender(path)
        self.experiment = None
        if os.environ.get(EXPERIMENT_ENV):  # `funnel serve --variant/--traffic`: route users by a salted hash
            self.experiment = Experiment(os.environ[EXPERIMENT_ENV], loaded={str(path.resolve()): self.recommender})
        self.logger = None
        log_dir = os.environ.get("FUNNEL_LOG_DIR")
        sample = float(os.environ.get("FUNNEL_LOG_SAMPLE", "0.05"))
        if log_dir and sample > 0:
            m = self.recommender.manifest
            version = f"{m['model']}/{m['version']}@{m['created']} {m['ensemble_checksum'][7:19]}"
            self.logger = PredictionLogger(log_dir, sample, version)
        self._requests = 0

    def finalize(self) -> None:
        """Triton unloads the model (clean shutdown): flush the prediction log."""
        if self.logger is not None:
            self.logger.close()

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        def optional(request, name, default):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            return default if tensor is None else tensor.as_numpy().reshape(-1)

        responses = []
        for request in requests:
            try:
                users = pb_utils.get_input_tensor_by_name(request, "user_id")
                if users is None:
                    raise RequestError("missing input 'user_id' (BYTES: one raw user id per user)")
                users = users.as_numpy()
                k = optional(request, "k", None)
                temperature = optional(request, "temperature", np.zeros(1, np.float32))
                seed = optional(request, "seed", np.full(1, -1, np.int64))
                exclude = optional(request, "exclude_items", None)
                if k is not None and len(k) != 1:
                    raise RequestError("k: one value per request")
                started = time.perf_counter()
                served_by = self.experiment or self.recommender
                if self.experiment is not None:
                    self.recommender.request_table(users, None if k is None else int(k[0]), exclude,
                                                   float(temperature[0]), int(seed[0]))  # validate once
                out = served_by.recommend(users, None if k is None else int(k[0]), exclude,
                                          float(temperature[0]), int(seed[0]),
                                          with_candidates=self.logger is not None)
                variant = out.get("variant", np.full(len(out["item_ids"]), b"", dtype=object))
                tensors = [pb_utils.Tensor("item_ids", out["item_ids"].astype(np.object_)),
                           pb_utils.Tensor("scores", out["scores"].astype(np.float32)),
                           pb_utils.Tensor("sources", out["sources"].astype(np.object_)),
                           pb_utils.Tensor("variant", variant.astype(np.object_))]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
                if self.logger is not None:
                    self._requests += 1
                    request_id = request.request_id() or uuid.uuid4().hex
                    self.logger.log_batch(request_id, users, out, self.experiment.name if self.experiment else "",
                                          temperature=float(temperature[0]),
                                          latency_ms=(time.perf_counter() - started) * 1000.0)
            except RequestError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
            except Exception as exc:  # noqa: BLE001 - answer, log, keep serving
                LOG.exception("funnel request failed")
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"internal error: {type(exc).__name__}: {exc}")))
        return responses
