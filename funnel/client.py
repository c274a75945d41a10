"""``funnel.client``: recommendations from a funnel Triton server over gRPC (tritonclient)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from funnel.core.errors import FunnelError

MODEL = "funnel"
OUTPUT_NAMES = ("item_ids", "scores", "sources", "variant")


@dataclass
class Recommendation:
    """One user's answer: raw item ids, scores and the candidate source of each, best first; the
    experiment variant that answered (empty outside an experiment)."""

    user_id: str
    items: list[str]
    scores: list[float]
    sources: list[str]
    variant: str = ""

    def as_dict(self) -> dict:
        out = {"user_id": self.user_id, "items": self.items, "scores": self.scores, "sources": self.sources}
        if self.variant:
            out["variant"] = self.variant
        return out


class Client:
    """A gRPC client of the ``funnel`` model; ``recommend`` sends users in batches of ``batch_size``."""

    def __init__(self, url: str = "127.0.0.1:8001", batch_size: int = 256, timeout: float | None = 30.0,
                 tls_ca: str | None = None):
        """``tls_ca``: PEM file of the server's certificate or its CA: talk TLS (``funnel serve --grpc-tls-cert``)."""
        self.url, self.batch_size, self.timeout = url, batch_size, timeout
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(url, ssl=bool(tls_ca),
                                                        root_certificates=str(tls_ca) if tls_ca else None)

    def ready(self) -> bool:
        try:
            return bool(self._client.is_model_ready(MODEL))
        except Exception:  # noqa: BLE001
            return False

    def infer(self, user_ids: Sequence, k: int | None = None, exclude_items: Sequence | None = None,
              temperature: float | None = None, seed: int | None = None) -> dict[str, np.ndarray]:
        """One request: the raw output arrays (``item_ids``/``sources`` as bytes, shape (users, k))."""

        g = self._grpc

        def tensor(name: str, values: np.ndarray, dtype: str):
            t = g.InferInput(name, list(values.shape), dtype)
            t.set_data_from_numpy(values)
            return t

        # one row per user (Triton's batch dimension); request-level values repeat on every row
        users = np.array([str(u).encode() for u in user_ids], dtype=object).reshape(-1, 1)
        n = len(users)
        inputs = [tensor("user_id", users, "BYTES")]
        if k is not None:
            inputs.append(tensor("k", np.full((n, 1), k, dtype=np.int32), "INT32"))
        if exclude_items:
            row = np.array([str(i).encode() for i in exclude_items], dtype=object)
            inputs.append(tensor("exclude_items", np.tile(row, (n, 1)), "BYTES"))
        if temperature is not None:
            inputs.append(tensor("temperature", np.full((n, 1), temperature, dtype=np.float32), "FP32"))
        if seed is not None:
            inputs.append(tensor("seed", np.full((n, 1), seed, dtype=np.int64), "INT64"))
        outputs = [g.InferRequestedOutput(n) for n in OUTPUT_NAMES]
        try:
            result = self._client.infer(MODEL, inputs, outputs=outputs, client_timeout=self.timeout)
        except InferenceServerException as exc:
            raise FunnelError(f"{self.url}: {exc.message()}") from None
        out = {name: result.as_numpy(name) for name in OUTPUT_NAMES}
        out["variant"] = out["variant"].reshape(-1)
        return out

    def recommend(self, user_ids: Iterable, k: int | None = None, exclude_items: Sequence | None = None,
                  temperature: float | None = None, seed: int | None = None) -> Iterator[Recommendation]:
        """Recommendations per user, in order, sending ``batch_size`` users per request."""
        batch: list = []
        for user in user_ids:
            batch.append(user)
            if len(batch) == self.batch_size:
                yield from self._answer(batch, k, exclude_items, temperature, seed)
                batch = []
        if batch:
            yield from self._answer(batch, k, exclude_items, temperature, seed)

    def _answer(self, batch, k, exclude_items, temperature, seed) -> Iterator[Recommendation]:
        out = self.infer(batch, k, exclude_items, temperature, seed)
        for user, ids, scores, sources, variant in zip(batch, out["item_ids"], out["scores"], out["sources"],
                                                       out["variant"]):
            keep = ids != b""
            yield Recommendation(str(user), [i.decode() for i in ids[keep]], [float(s) for s in scores[keep]],
                                 [s.decode() for s in sources[keep]], variant.decode())

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
