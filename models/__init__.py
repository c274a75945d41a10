"""Model training (two-tower retriever, DLRM ranker) with merlin-models."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any submodule imports TensorFlow
