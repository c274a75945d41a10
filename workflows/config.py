"""PreprocessConfig and its choices (a light module: the CLI builds its flags from it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from funnel.core.config import Choice, coerce_choices
from funnel.core.errors import FunnelError


class Split(Choice):
    """How interactions are split into train and test."""

    TIME = "time"  # the last test_days calendar days are test
    USER_LAST = "user-last"  # each user's latest basket is test


class Device(Choice):
    """Where NVTabular runs: auto (a GPU with cuDF when present), cpu (pandas) or gpu (cuDF)."""

    AUTO = "auto"
    CPU = "cpu"
    GPU = "gpu"


@dataclass
class PreprocessConfig:
    """Everything ``funnel preprocess`` can be told."""

    data: str = field(default="", metadata={"help": "dataset directory from `funnel data`"})
    out: str = field(default="", metadata={"help": "preprocessing output directory"})
    split: Split = field(default=Split.TIME, metadata={"help": "time (last days) or user-last (last basket)"})
    test_days: int = field(default=7, metadata={"help": "time split: calendar days held out as test"})
    device: Device = field(default=Device.AUTO, metadata={"help": "auto, cpu (pandas) or gpu (cuDF)"})
    workers: int | None = field(default=None, metadata={"help": "run NVTabular on a local Dask cluster of N workers"})
    scheduler: str | None = field(default=None, metadata={"help": "run NVTabular on an existing Dask cluster (ADDRESS)"})
    id_freq_threshold: int = field(default=1, metadata={"help": "ids seen fewer times in train go to the OOV bucket"})
    feature_freq_threshold: int = field(default=3, metadata={"help": "the same for other categorical features"})
    seed: int = 0

    def __post_init__(self) -> None:
        coerce_choices(self)
        if self.test_days < 1 or self.id_freq_threshold < 1 or self.feature_freq_threshold < 1:
            raise FunnelError("preprocess: test_days >= 1, frequency thresholds >= 1")
        if self.workers is not None and self.workers < 1:
            raise FunnelError("preprocess: workers must be >= 1")
        if self.workers and self.scheduler:
            raise FunnelError("preprocess: use either workers or scheduler, not both")
