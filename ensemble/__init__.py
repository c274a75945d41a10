"""The retrieve -> filter -> rank serving graph, built with merlin-systems and exported to Triton.

- :mod:`ensemble.ops`: the serving operators (merlin-systems' operator contract);
- :mod:`ensemble.build`: ``export(ExportConfig)`` writes a Triton model repository;
- :mod:`ensemble.runtime`: ``Recommender``, the exported graph run in-process;
- :mod:`ensemble.triton_model`: the python-backend model Triton runs.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any submodule imports TensorFlow
