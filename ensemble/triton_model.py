"""Triton python-backend model running the whole funnel graph (``funnel/1/model.py`` imports this)."""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble.experiment import ENV as EXPERIMENT_ENV
from ensemble.experiment import Experiment
from ensemble.prediction_log import PredictionLogger
from ensemble.runtime import Recommender, RequestError
from ensemble.threads import limit_threads

LOG = logging.getLogger("funnel.triton")


def _model_dir(args: dict) -> Path:
    repo = Path(args["model_repository"])
    return repo.parent.parent if repo.suffix == ".py" else repo  # some Triton builds pass model.py


class TritonPythonModel:
    """Loads the export's :class:`ensemble.runtime.Recommender`; one response per request, in order."""

    def initialize(self, args: dict) -> None:
        threads = limit_threads()  # before TensorFlow runs: one thread per pool unless FUNNEL_THREADS says more
        LOG.info("funnel model instance threads: %s", threads)
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
        """Answer a list of requests (several when Triton's dynamic batcher merged concurrent ones).

        Deterministic requests (temperature 0) with the same ``k`` and ``exclude_items`` run the
        graph once on all their users; the answers are exactly those of separate runs (the graph
        treats each user row independently). Sampled requests run alone, so a request's seed
        draws the same list whatever else was queued with it.
        """
        import triton_python_backend_utils as pb_utils

        def failed(message: str):
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, Request]]] = {}
        for i, request in enumerate(requests):
            try:
                parsed = self._parse(request, pb_utils)
            except RequestError as exc:
                responses[i] = failed(str(exc))
                continue
            key = (parsed.k, parsed.exclude_key) if parsed.temperature == 0.0 else ("alone", i)
            groups.setdefault(key, []).append((i, parsed))
        for members in groups.values():
            started = time.perf_counter()
            first = members[0][1]
            users = np.concatenate([m.users for _, m in members]) if len(members) > 1 else first.users
            try:
                served_by = self.experiment or self.recommender
                out = served_by.recommend(users, first.k, first.exclude, first.temperature, first.seed,
                                          with_candidates=self.logger is not None)
            except RequestError as exc:
                for i, _ in members:
                    responses[i] = failed(str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - answer, log, keep serving
                LOG.exception("funnel request failed")
                for i, _ in members:
                    responses[i] = failed(f"internal error: {type(exc).__name__}: {exc}")
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            variant = out.get("variant", np.full(len(users), b"", dtype=object))
            offset = 0
            for i, parsed in members:
                rows = slice(offset, offset + len(parsed.users))
                offset += len(parsed.users)
                part = {name: values[rows] for name, values in out.items()} if len(members) > 1 else out
                tensors = [pb_utils.Tensor("item_ids", part["item_ids"].astype(np.object_)),
                           pb_utils.Tensor("scores", part["scores"].astype(np.float32)),
                           pb_utils.Tensor("sources", part["sources"].astype(np.object_)),
                           pb_utils.Tensor("variant", variant[rows].astype(np.object_).reshape(-1, 1))]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                if self.logger is not None:
                    self._requests += 1
                    request_id = requests[i].request_id() or uuid.uuid4().hex
                    self.logger.log_batch(request_id, parsed.users, part,
                                          self.experiment.name if self.experiment else "",
                                          temperature=parsed.temperature, latency_ms=elapsed_ms)
        return responses

    def _parse(self, request, pb_utils) -> "Request":
        """One request's inputs, validated (a RequestError names the input)."""

        def rows(name):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            return None if tensor is None else tensor.as_numpy()

        users = rows("user_id")
        if users is None:
            raise RequestError("missing input 'user_id' (BYTES: one raw user id per user, shape [users, 1])")
        users = users.reshape(-1)

        def one(name, default):
            values = rows(name)
            if values is None:
                return default
            values = values.reshape(-1)
            same = values == values[0] if len(values) else np.ones(0, bool)
            if values.dtype.kind == "f" and len(values):  # NaN repeated is one value (refused below as not finite)
                same |= np.isnan(values) & np.isnan(values[0])
            if not same.all():
                raise RequestError(f"{name}: one value per request (every user row repeats it)")
            return values[0] if len(values) else default

        k = one("k", None)
        temperature = float(one("temperature", np.float32(0.0)))
        seed = int(one("seed", np.int64(-1)))
        exclude = rows("exclude_items")
        if exclude is not None:
            if len(users) and exclude.size and exclude.size % len(users):
                raise RequestError(f"exclude_items: shape {list(exclude.shape)} does not repeat one list for "
                                   f"each of the {len(users)} user rows")
            exclude = exclude.reshape(len(users), -1) if len(users) and exclude.size else exclude.reshape(-1)[:0]
            if len(exclude) > 1 and not (exclude == exclude[0]).all():
                raise RequestError("exclude_items: one list per request (every user row repeats it)")
            exclude = exclude[0] if len(exclude) else exclude.reshape(-1)
        k = None if k is None else int(k)
        self.recommender.request_table(users, k, exclude, temperature, seed)  # validate before merging
        return Request(users, k, exclude, temperature, seed,
                       None if exclude is None else tuple(exclude.tolist()))


@dataclass
class Request:
    """One request's users and its request-level values."""

    users: np.ndarray
    k: int | None
    exclude: np.ndarray | None
    temperature: float
    seed: int
    exclude_key: tuple | None
