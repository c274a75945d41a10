"""Data sources. Every source writes one canonical dataset directory (see ``canonical``)."""

from funnel.data.canonical import Dataset, read_dataset

__all__ = ["Dataset", "read_dataset"]
