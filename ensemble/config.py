"""ExportConfig: how `funnel export` builds the serving graph (dataclass, YAML, CLI overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field

from funnel.errors import FunnelError


@dataclass
class ExportConfig:
    """How the serving graph is built (one YAML per export plus command-line overrides)."""

    run: str = field(default="", metadata={"help": "training run directory"})
    out: str = field(default="triton_repo", metadata={"help": "Triton model repository to write"})
    candidates: int = field(default=100, metadata={"help": "Faiss top-N per user (the ranker trains on top-100)"})
    recent: int = field(default=20, metadata={"help": "own recent items added where the domain repurchases"})
    trending: int = field(default=50, metadata={"help": "trending items added to every candidate list"})
    trending_days: int = field(default=7, metadata={"help": "window of the trending counts"})
    trending_for_known: str = field(default="fill", metadata={
        "help": "trending items for known users: fill (after ranked candidates) or rank (scored by the ranker)"})
    k: int = field(default=12, metadata={"help": "items returned when a request does not say"})
    max_k: int = field(default=100, metadata={"help": "largest k a request may ask for"})
    max_batch: int = field(default=4096, metadata={"help": "most users in one request"})
    exclude_seen: str = field(default="auto", metadata={"help": "auto, all, days or never"})
    seen_days: int = field(default=30, metadata={"help": "window for exclude_seen=days"})
    out_of_stock: bool = field(default=True, metadata={"help": "drop items the inventory marks out of stock"})
    exclude_categories: list[str] = field(default_factory=list, metadata={"help": "item attribute rules COLUMN=VALUE"})
    exclude_items: list[str] = field(default_factory=list, metadata={"help": "raw item ids never served"})
    features: str = field(default="", metadata={
        "help": "Feast feature repository (funnel features apply): read users' new purchases per request"})
    index: str = field(default="auto", metadata={"help": "Faiss index: auto, flat, ivf or hnsw"})
    tf_runtime: str = field(default="auto", metadata={
        "help": "auto/python (TF inside the executor), tensorflow (Triton's TF backend models, via BLS) "
                "or python-bls (the same split with python-backend models)"})
    instances: int = field(default=1, metadata={"help": "Triton model instances (processes)"})
    seed: int = 0

    def validate(self) -> None:
        if not self.run:
            raise FunnelError("export: need a run directory")
        if self.candidates < 1 or self.k < 1 or self.max_k < self.k or self.max_batch < 1:
            raise FunnelError("export: candidates >= 1, 1 <= k <= max_k, max_batch >= 1")
        if self.exclude_seen not in ("auto", "all", "days", "never"):
            raise FunnelError(f"export: exclude_seen must be auto, all, days or never (got {self.exclude_seen!r})")
        if self.trending_for_known not in ("fill", "rank"):
            raise FunnelError(f"export: trending_for_known must be fill or rank (got {self.trending_for_known!r})")
        if self.tf_runtime not in ("auto", "python", "tensorflow", "python-bls"):
            raise FunnelError(f"export: tf_runtime must be auto, python, tensorflow or python-bls "
                              f"(got {self.tf_runtime!r})")
        for rule in self.exclude_categories:
            if "=" not in rule:
                raise FunnelError(f"export: exclude_categories rule {rule!r} is not COLUMN=VALUE")

    def category_rules(self) -> dict[str, list[str]]:
        rules: dict[str, list[str]] = {}
        for rule in self.exclude_categories:
            col, value = rule.split("=", 1)
            rules.setdefault(col.strip(), []).append(value.strip())
        return rules
