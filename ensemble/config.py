"""ExportConfig: how `funnel export` builds the serving graph (dataclass, YAML, CLI overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field

from funnel.core.config import Choice, coerce_choices
from funnel.core.errors import FunnelError


class ExcludeSeen(Choice):
    """Which of a user's past purchases are never recommended again."""

    AUTO = "auto"  # never where the domain repurchases, else all
    ALL = "all"
    DAYS = "days"  # bought within seen_days
    NEVER = "never"


class TrendingForKnown(Choice):
    """Trending candidates of known users: after the ranked ones (fill) or scored by the ranker (rank)."""

    FILL = "fill"
    RANK = "rank"


class TfRuntime(Choice):
    """Where the TensorFlow models run in the export."""

    AUTO = "auto"  # = python
    PYTHON = "python"  # inside the executor (the bundled CPU Triton has only the python backend)
    TENSORFLOW = "tensorflow"  # Triton's TensorFlow backend, called through BLS
    PYTHON_BLS = "python-bls"  # the same split with python-backend models


class Inventory(Choice):
    """Which stock the export filters with."""

    LATEST = "latest"  # the dataset's current stock (production)
    CUTOFF = "cutoff"  # stock as of the training cutoff, from the stock history (evaluation: no look-ahead)


class IndexKind(Choice):
    """The Faiss index: chosen by catalogue size (auto), or one kind."""

    AUTO = "auto"
    FLAT = "flat"
    IVF = "ivf"
    HNSW = "hnsw"


@dataclass
class ExportConfig:
    """How the serving graph is built (one YAML per export plus command-line overrides)."""

    run: str = field(default="", metadata={"help": "training run directory"})
    out: str = field(default="triton_repo", metadata={"help": "Triton model repository to write"})
    candidates: int = field(default=100, metadata={"help": "Faiss top-N per user (the ranker trains on top-100)"})
    item_item: int = field(default=100, metadata={
        "help": "item-item (EASE) top-N per user, from the run's item_item.npz (0: no item-item source)"})
    recent: int = field(default=20, metadata={"help": "own recent items added where the domain repurchases"})
    new_items: int = field(default=20, metadata={
        "help": "new items per user: never bought in training, on sale at export, best two-tower score first"})
    new_item_slots: int = field(default=0, metadata={
        "help": "merchandising rule: the last N places of a known user's list go to the user's N best-scored new "
                "items among the candidates (fewer where fewer survive the filters); 0: new items compete for "
                "places like any other candidate"})
    trending: int = field(default=50, metadata={"help": "trending items added to every candidate list"})
    trending_days: int = field(default=7, metadata={"help": "window of the trending counts"})
    trending_for_known: TrendingForKnown = field(default=TrendingForKnown.FILL, metadata={
        "help": "trending items for known users: fill (after ranked candidates) or rank (scored by the ranker)"})
    ranker_shortlist: int = field(default=-1, metadata={
        "help": "candidates per user the ranker scores, the best by the sources' blend (-1: as trained, "
                "ranking.json; 0: every candidate). The ranker's share was tuned for the trained value"})
    k: int = field(default=12, metadata={"help": "items returned when a request does not say"})
    max_k: int = field(default=100, metadata={"help": "largest k a request may ask for"})
    max_batch: int = field(default=4096, metadata={"help": "most users in one request"})
    exclude_seen: ExcludeSeen = field(default=ExcludeSeen.AUTO, metadata={"help": "past purchases never shown again"})
    seen_days: int = field(default=30, metadata={"help": "window for exclude_seen=days"})
    out_of_stock: bool = field(default=True, metadata={"help": "drop items the inventory marks out of stock"})
    inventory: Inventory = field(default=Inventory.LATEST, metadata={
        "help": "latest (the dataset's current stock) or cutoff (stock as of the training cutoff, for evaluation)"})
    exclude_categories: list[str] = field(default_factory=list, metadata={"help": "item attribute rules COLUMN=VALUE"})
    exclude_items: list[str] = field(default_factory=list, metadata={"help": "raw item ids never served"})
    features: str = field(default="", metadata={
        "help": "Feast feature repository (funnel features apply): read users' new purchases per request"})
    index: IndexKind = field(default=IndexKind.AUTO, metadata={"help": "Faiss index (auto: by catalogue size)"})
    tf_runtime: TfRuntime = field(default=TfRuntime.AUTO, metadata={
        "help": "python (TF inside the executor), tensorflow (Triton's TF backend models, via BLS) "
                "or python-bls (the same split with python-backend models)"})
    instances: int = field(default=1, metadata={"help": "Triton model instances (processes)"})
    batch_delay_us: int = field(default=0, metadata={
        "help": "Triton's dynamic batcher: microseconds a request may wait for others to be answered with it "
                "(0: merge only what is already queued; -1: no batcher, one request at a time)"})
    seed: int = 0

    def __post_init__(self) -> None:
        coerce_choices(self)
        if self.candidates < 1 or self.k < 1 or self.max_k < self.k or self.max_batch < 1:
            raise FunnelError("export: candidates >= 1, 1 <= k <= max_k, max_batch >= 1")
        if self.recent < 0 or self.item_item < 0 or self.new_items < 0 or self.trending < 0 or self.trending_days < 1 or self.seen_days < 0 or self.instances < 1:
            raise FunnelError("export: recent, item_item, new_items, trending, seen_days >= 0; trending_days, "
                              "instances >= 1")
        if not 0 <= self.new_item_slots <= self.k:
            raise FunnelError(f"export: new_item_slots must be in [0, k={self.k}], got {self.new_item_slots}")
        if self.ranker_shortlist < -1:
            raise FunnelError("export: ranker_shortlist >= 0, or -1 for the run's own")
        if self.batch_delay_us < -1:
            raise FunnelError("export: batch_delay_us >= 0, or -1 for no dynamic batcher")
        for rule in self.exclude_categories:
            if "=" not in rule:
                raise FunnelError(f"export: exclude_categories rule {rule!r} is not COLUMN=VALUE")

    def category_rules(self) -> dict[str, list[str]]:
        rules: dict[str, list[str]] = {}
        for rule in self.exclude_categories:
            col, value = rule.split("=", 1)
            rules.setdefault(col.strip(), []).append(value.strip())
        return rules
