"""funnel: a GPU-first multi-stage recommender (retrieve -> filter -> rank) on NVIDIA Merlin."""

__version__ = "0.1.0"
