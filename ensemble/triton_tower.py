"""Triton python-backend model serving one SavedModel (``--tf-runtime python-bls``).

Stands where Triton's TensorFlow backend would (``--tf-runtime tensorflow``): same inputs and
output, called by the funnel executor through BLS.
"""

from __future__ import annotations

import json
from pathlib import Path

from ensemble.savedmodel import SavedModelRunner
from ensemble.threads import limit_threads


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        limit_threads()  # one thread per pool (FUNNEL_THREADS), as in the funnel model
        repo = Path(args["model_repository"])
        model_dir = (repo.parent.parent if repo.suffix == ".py" else repo) / str(args["model_version"])
        self.runner = SavedModelRunner(model_dir / "model.savedmodel")
        self.output = json.loads(args["model_config"])["output"][0]["name"]

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.runner.inputs}
                out = self.runner(feed)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, out)]))
            except Exception as exc:  # noqa: BLE001
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return responses
